"""Every IAM document the program writes, parsed: exactly the grants the device and CI roles need."""

from __future__ import annotations

import sys

import pytest

from .harness import ACCOUNT, PROJECT_DIR, ProgramRun, Resource, config_value

sys.path.insert(0, str(PROJECT_DIR / "policy"))
from edgecv_policies import wildcard_problems  # noqa: E402

ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
GITHUB = "token.actions.githubusercontent.com"
DEVICE_PREFIX = "${aws:PrincipalTag/x509Subject/OU}/${aws:PrincipalTag/x509Subject/CN}"


def as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def grants(doc: dict) -> set[tuple[str, str]]:
    """(action, resource) pairs an identity policy allows."""
    out = set()
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow", st
        assert "NotAction" not in st and "NotResource" not in st
        out |= {(a, r) for a in as_list(st["Action"]) for r in as_list(st["Resource"])}
    return out


def role(run: ProgramRun, suffix: str) -> Resource:
    return next(r for r in run.of_type(ROLE) if r.name.endswith(suffix))


def role_policy(run: ProgramRun, role_: Resource) -> dict:
    attached = [p for p in run.of_type(ROLE_POLICY) if p.inputs["role"] == role_.id]
    assert len(attached) == 1, f"{role_.name}: one inline policy expected"
    return attached[0].doc("policy")


def statement(doc: dict, sid: str) -> dict:
    return next(s for s in doc["Statement"] if s.get("Sid") == sid)


def test_device_role_may_do_exactly_what_devices_need(stack):
    _, run = stack
    out = run.outputs
    doc = role_policy(run, role(run, "-device"))
    assert grants(doc) == {
        ("s3:PutObject", f"{out['evidence_bucket_arn']}/{DEVICE_PREFIX}/*"),
        ("kms:GenerateDataKey", out["evidence_kms_key_arn"]),
        ("kms:Decrypt", out["evidence_kms_key_arn"]),
        ("aps:RemoteWrite", run.one("aws:amp/workspace:Workspace").state["arn"]),
    }
    # KMS only through S3 in the stack's region, never directly.
    assert not any(r.startswith(out["artifact_bucket_arn"]) or r == out["artifact_kms_key_arn"] for _, r in grants(doc)), \
        "devices fetch artifacts through presigned URLs only"
    for sid in ("EncryptEvidence",):
        assert statement(doc, sid)["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{out['region']}.amazonaws.com"}}


def test_device_role_is_assumed_only_through_our_trust_anchor(stack):
    _, run = stack
    trust = role(run, "-device").doc("assumeRolePolicy")
    [st] = trust["Statement"]
    assert st["Effect"] == "Allow"
    assert st["Principal"] == {"Service": "rolesanywhere.amazonaws.com"}
    assert set(st["Action"]) == {"sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"}
    assert st["Condition"]["ArnEquals"] == {"aws:SourceArn": run.outputs["device_trust_anchor_arn"]}
    # The certificate must name the site (OU) and the device (CN): the evidence prefix is built from them.
    assert st["Condition"]["Null"] == {"aws:PrincipalTag/x509Subject/CN": "false",
                                       "aws:PrincipalTag/x509Subject/OU": "false"}


def test_device_profile_hands_out_only_the_device_role(stack):
    name, run = stack
    profile = run.one("aws:rolesanywhere/profile:Profile")
    assert profile.inputs["roleArns"] == [run.outputs["device_role_arn"]]
    assert profile.inputs["durationSeconds"] == (config_value(name, "deviceSessionSeconds") or 3600)
    assert run.outputs["device_profile_arn"] == profile.state["arn"]


def test_trust_anchor_is_the_configured_private_ca(stack):
    name, run = stack
    source = run.one("aws:rolesanywhere/trustAnchor:TrustAnchor").inputs["source"]
    assert source == {"sourceType": "AWS_ACM_PCA",
                      "sourceData": {"acmPcaArn": config_value(name, "deviceCa")["pcaArn"]}}


def test_trust_anchor_from_a_certificate_bundle(fixture_run):
    from .harness import FIXTURES

    source = fixture_run.one("aws:rolesanywhere/trustAnchor:TrustAnchor").inputs["source"]
    assert source["sourceType"] == "CERTIFICATE_BUNDLE"
    assert source["sourceData"]["x509CertificateData"] == (FIXTURES / "device-ca.pem").read_text()


def test_ci_role_may_publish_artifacts_and_read_outputs_only(stack):
    _, run = stack
    out = run.outputs
    doc = role_policy(run, role(run, "-ci"))
    parameter = run.one("aws:ssm/parameter:Parameter")
    assert grants(doc) == {
        ("s3:PutObject", f"{out['artifact_bucket_arn']}/models/*"),
        ("s3:GetObject", f"{out['artifact_bucket_arn']}/models/*"),
        ("s3:GetObjectVersion", f"{out['artifact_bucket_arn']}/models/*"),
        ("s3:ListBucket", out["artifact_bucket_arn"]),
        ("kms:GenerateDataKey", out["artifact_kms_key_arn"]),
        ("kms:Decrypt", out["artifact_kms_key_arn"]),
        ("ssm:GetParameter", f"arn:aws:ssm:{out['region']}:{ACCOUNT}:parameter{parameter.inputs['name']}"),
    }
    assert statement(doc, "ListModelArtifacts")["Condition"] == {"StringLike": {"s3:prefix": ["models/*"]}}
    # Never delete, never touch retention or legal holds (the object lock stays in force).
    actions = {a for a, _ in grants(doc)}
    assert not actions & {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention",
                          "s3:PutObjectRetention", "s3:PutObjectLegalHold"}


def test_ci_trust_is_restricted_to_the_repository_branch(stack):
    name, run = stack
    [st] = role(run, "-ci").doc("assumeRolePolicy")["Statement"]
    assert st["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert st["Principal"] == {"Federated": config_value(name, "githubOidcProviderArn")}
    repo, branch = config_value(name, "githubRepo"), config_value(name, "githubBranch")
    # StringEquals only: no StringLike that a wildcard could widen to other branches or forks.
    assert st["Condition"] == {"StringEquals": {
        f"{GITHUB}:aud": "sts.amazonaws.com",
        f"{GITHUB}:sub": f"repo:{repo}:ref:refs/heads/{branch}",
    }}


def test_stack_makes_the_github_oidc_provider_when_none_is_given(fixture_run, dev):
    provider = fixture_run.one("aws:iam/openIdConnectProvider:OpenIdConnectProvider")
    assert provider.inputs["url"] == f"https://{GITHUB}"
    assert provider.inputs["clientIdLists"] == ["sts.amazonaws.com"]
    [st] = role(fixture_run, "-ci").doc("assumeRolePolicy")["Statement"]
    assert st["Principal"] == {"Federated": provider.state["arn"]}
    repo = config_value("dev", "githubRepo")
    assert st["Condition"]["StringEquals"][f"{GITHUB}:sub"] == f"repo:{repo}:ref:refs/heads/release"  # fixture_run's branch
    assert dev.of_type("aws:iam/openIdConnectProvider:OpenIdConnectProvider") == []


@pytest.mark.parametrize("run_name", ["dev", "prod", "fixture_run"])
def test_no_identity_policy_has_wildcards(run_name, request):
    run: ProgramRun = request.getfixturevalue(run_name)
    docs = [p.doc("policy") for p in run.of_type(ROLE_POLICY)]
    assert docs, "no role policies found"
    for doc in docs:
        assert wildcard_problems(doc) == []
        for st in doc["Statement"]:
            assert all("*" not in a for a in as_list(st["Action"]))
            # A '*' may only end an object-key pattern under one of our buckets.
            for r in as_list(st["Resource"]):
                if "*" in r:
                    assert r.startswith(("arn:aws:s3:::edgecv-", )) and r.endswith("/*") and r.count("*") == 1, r
    for r in run.of_type(ROLE):
        for st in r.doc("assumeRolePolicy")["Statement"]:
            assert st["Principal"] != "*" and "*" not in str(st["Principal"])
            assert st.get("Condition"), f"{r.name}: trust without conditions"


def test_kms_key_policy_limits_services_to_this_account_and_log_group(stack):
    _, run = stack
    key = next(k for k in run.of_type("aws:kms/key:Key") if "policy" in k.inputs)
    doc = key.doc("policy")
    services = {s["Sid"]: s for s in doc["Statement"] if "Service" in s["Principal"]}
    assert services["AmpPublishesToEncryptedTopic"]["Condition"] == {
        "StringEquals": {"aws:SourceAccount": ACCOUNT}}
    log_group = run.one("aws:cloudwatch/logGroup:LogGroup")
    assert services["CloudWatchLogsEncryptsOurLogGroup"]["Condition"] == {
        "ArnEquals": {"kms:EncryptionContext:aws:logs:arn": log_group.state["arn"]}}
    # No other principal than the account itself and those two services.
    principals = [s["Principal"] for s in doc["Statement"]]
    assert principals[0] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"} and len(principals) == 3
