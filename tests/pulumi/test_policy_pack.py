"""The policy pack: each policy against compliant and non-compliant resources, and against the real program.

Policies get their inputs exactly as the engine hands them over (pulumi_policy's read-only proxies
over camelCase props; stack policies linked by property dependencies).
"""

from __future__ import annotations

import json
import runpy
import sys
from typing import Any

import pulumi_policy
import pytest
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from .harness import PROJECT_DIR, ProgramRun

sys.path.insert(0, str(PROJECT_DIR / "policy"))
import edgecv_policies as pack  # noqa: E402

BUCKET = "aws:s3/bucket:Bucket"
PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
OPTS = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])
ALL_FLAGS = {"blockPublicAcls": True, "blockPublicPolicy": True, "ignorePublicAcls": True, "restrictPublicBuckets": True}
KMS_RULES = [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": "arn:aws:kms:x"}}]
EXPIRE_ALL = {"id": "e", "status": "Enabled", "filter": {}, "expiration": {"days": 30}}


def check(policy, resource_type: str, props: dict[str, Any], name: str = "r") -> list[str]:
    """Run one resource policy the way the analyzer does; return the violations."""
    violations: list[str] = []
    args = ResourceValidationArgs(resource_type, unknown_checking_proxy(props), f"urn:{name}", name, OPTS, None)
    policy.validate(args, lambda message, urn=None: violations.append(message))
    return violations


def stack_resource(resource_type: str, props: dict[str, Any], name: str, bucket: PolicyResource | None = None):
    deps = {"bucket": [bucket]} if bucket else {}
    return PolicyResource(resource_type, unknown_checking_proxy(props), f"urn:{name}", name, OPTS, None, None,
                          list(deps.get("bucket", [])), deps)


def check_stack(policy: StackValidationPolicy, resources: list[PolicyResource]) -> list[tuple[str, str | None]]:
    violations: list[tuple[str, str | None]] = []
    policy.validate(StackValidationArgs(resources), lambda message, urn=None: violations.append((message, urn)))
    return violations


def doc(*statements: dict) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


# --- no public buckets -------------------------------------------------------------------------

def test_public_access_block_needs_all_four_flags():
    assert check(pack.no_public_access, PAB, {"bucket": "b", **ALL_FLAGS}) == []
    [violation] = check(pack.no_public_access, PAB, {"bucket": "b", **ALL_FLAGS, "restrictPublicBuckets": False})
    assert "restrictPublicBuckets must be true" in violation
    [violation] = check(pack.no_public_access, PAB, {"bucket": "b", "blockPublicAcls": True})
    assert "blockPublicPolicy, ignorePublicAcls, restrictPublicBuckets" in violation


@pytest.mark.parametrize(("resource_type", "props"), [
    (BUCKET, {"acl": "public-read"}),
    ("aws:s3/bucketAclV2:BucketAclV2", {"acl": "public-read-write"}),
    ("aws:s3/bucketAcl:BucketAcl", {"accessControlPolicy": {"grants": [
        {"grantee": {"type": "Group", "uri": "http://acs.amazonaws.com/groups/global/AllUsers"}, "permission": "READ"}]}}),
    ("aws:s3/bucketPolicy:BucketPolicy", {"policy": doc({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                                          "Resource": "arn:aws:s3:::b/*"})}),
    ("aws:s3/bucketPolicy:BucketPolicy", {"policy": doc({"Effect": "Allow", "Principal": {"AWS": ["*"]},
                                                          "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"})}),
    ("aws:s3/bucketPolicy:BucketPolicy", {"policy": "{not json"}),
])
def test_public_acls_and_policies_are_violations(resource_type, props):
    assert check(pack.no_public_access, resource_type, props) != []


def test_private_acl_and_deny_only_policy_pass():
    assert check(pack.no_public_access, BUCKET, {"acl": "private", "tags": {}}) == []
    tls = doc({"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "arn:aws:s3:::b/*",
               "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
              {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:role/r"}, "Action": "s3:GetObject",
               "Resource": "arn:aws:s3:::b/*"})
    assert check(pack.no_public_access, "aws:s3/bucketPolicy:BucketPolicy", {"policy": tls}) == []


def test_every_bucket_needs_a_public_access_block():
    bucket = stack_resource(BUCKET, {"tags": {}}, "logs")
    other = stack_resource(BUCKET, {"tags": {}}, "other")
    # The block's `bucket` is unknown in a preview; the link is the property dependency.
    block = stack_resource(PAB, {"bucket": UNKNOWN_STRING_VALUE, **ALL_FLAGS}, "logs-pab", bucket)
    assert check_stack(pack.public_access_block_required, [bucket, block]) == []
    [(message, urn)] = check_stack(pack.public_access_block_required, [bucket, block, other])
    assert "bucket 'other' has no aws.s3.BucketPublicAccessBlock" in message and urn == "urn:other"


# --- encryption --------------------------------------------------------------------------------

@pytest.mark.parametrize(("resource_type", "props", "ok"), [
    (SSE, {"rules": KMS_RULES}, True),
    (SSE, {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms:dsse"}}]}, True),
    (SSE, {"rules": [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}]}, False),
    (SSE, {"rules": []}, False),
    (BUCKET, {"serverSideEncryptionConfiguration": {"rule": {"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}}},
     False),
    (BUCKET, {"tags": {}}, True),  # the separate configuration resource is the stack policy's business
])
def test_sse_must_be_kms(resource_type, props, ok):
    violations = check(pack.kms_encryption, resource_type, props)
    assert (violations == []) is ok, violations


def test_every_bucket_needs_an_encryption_configuration():
    bucket = stack_resource(BUCKET, {"tags": {}}, "b")
    sse = stack_resource(SSE, {"bucket": "b", "rules": KMS_RULES}, "b-sse", bucket)
    assert check_stack(pack.encryption_required, [bucket, sse]) == []
    [(message, _)] = check_stack(pack.encryption_required, [bucket])
    assert "no aws.s3.BucketServerSideEncryptionConfiguration" in message


# --- versioning on artifact stores ---------------------------------------------------------------

def test_artifact_buckets_must_be_versioned():
    artifact = stack_resource(BUCKET, {"tags": {"edgecv:store": "artifact"}}, "models")
    plain = stack_resource(BUCKET, {"tags": {}}, "scratch")
    on = stack_resource(VERSIONING, {"versioningConfiguration": {"status": "Enabled"}}, "v", artifact)
    suspended = stack_resource(VERSIONING, {"versioningConfiguration": {"status": "Suspended"}}, "v", artifact)
    assert check_stack(pack.artifact_versioning, [artifact, plain, on]) == []
    [(message, urn)] = check_stack(pack.artifact_versioning, [artifact, plain, suspended])
    assert "artifact bucket 'models'" in message and "Suspended" in message and urn == "urn:models"
    assert len(check_stack(pack.artifact_versioning, [artifact, plain])) == 1


# --- lifecycle on evidence ---------------------------------------------------------------------

@pytest.mark.parametrize(("rules", "ok"), [
    ([EXPIRE_ALL], True),
    ([{**EXPIRE_ALL, "status": "Disabled"}], False),
    ([{**EXPIRE_ALL, "filter": {"prefix": "site-a/"}}], False),
    ([{**EXPIRE_ALL, "expiration": {"expiredObjectDeleteMarker": True}}], False),
    ([{"id": "t", "status": "Enabled", "filter": {}, "transitions": [{"days": 30, "storageClass": "GLACIER"}]}], False),
    ([], False),
])
def test_evidence_buckets_must_expire_objects(rules, ok):
    evidence = stack_resource(BUCKET, {"tags": {"edgecv:store": "evidence"}}, "clips")
    lifecycle = stack_resource(LIFECYCLE, {"rules": rules}, "lc", evidence)
    violations = check_stack(pack.evidence_lifecycle, [evidence, lifecycle])
    assert (violations == []) is ok, violations


def test_evidence_bucket_without_lifecycle_is_a_violation():
    evidence = stack_resource(BUCKET, {"tags": {"edgecv:store": "evidence"}}, "clips")
    [(message, _)] = check_stack(pack.evidence_lifecycle, [evidence])
    assert "evidence bucket 'clips' needs an enabled lifecycle rule" in message


# --- no wildcard IAM ---------------------------------------------------------------------------

LEAST = {"Sid": "Read", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::models/*"}


@pytest.mark.parametrize(("statement", "words"), [
    ({**LEAST, "Action": "*"}, "wildcard action '*'"),
    ({**LEAST, "Action": "s3:*"}, "wildcard action 's3:*'"),
    ({**LEAST, "Action": ["s3:GetObject", "s3:Put*"]}, "wildcard action 's3:Put*'"),
    ({**LEAST, "Resource": "*"}, "wildcard resource '*'"),
    ({**LEAST, "Resource": "arn:aws:s3:::*"}, "wildcard resource"),
    ({**LEAST, "Resource": "arn:aws:s3:::edgecv-*/models/*"}, "wildcard resource"),
    ({**LEAST, "Resource": "arn:aws:kms:eu-west-1:123456789012:key/*"}, "wildcard resource"),
    ({**LEAST, "Resource": "arn:aws:kms:*:123456789012:key/k"}, "wildcard resource"),
    ({"Sid": "N", "Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:aws:s3:::b"}, "NotAction"),
    ({"Sid": "R", "Effect": "Allow", "Action": "s3:GetObject", "NotResource": "arn:aws:s3:::b"}, "NotResource"),
])
def test_wildcards_in_identity_policies_are_violations(statement, words):
    [violation] = [v for v in check(pack.no_wildcard_iam, ROLE_POLICY, {"role": "r", "policy": doc(statement)})
                   if words in v] or [None]
    assert violation is not None and "'r'" in violation


def test_named_actions_and_resources_pass():
    deny_all = {"Effect": "Deny", "Action": "*", "Resource": "*"}  # Deny statements may be broad
    for policy in (doc(LEAST), doc(LEAST, deny_all), json.loads(doc(LEAST))):
        assert check(pack.no_wildcard_iam, ROLE_POLICY, {"role": "r", "policy": policy}) == []
    assert check(pack.no_wildcard_iam, "aws:iam/policy:Policy", {"policy": doc(LEAST)}) == []


def test_roles_anyone_may_assume_and_wildcard_inline_policies_are_violations():
    open_trust = doc({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"})
    [violation] = check(pack.no_wildcard_iam, "aws:iam/role:Role", {"assumeRolePolicy": open_trust}, "open")
    assert "anyone may assume this role" in violation
    inline = [{"name": "admin", "policy": doc({**LEAST, "Action": "*"})}]
    trust = doc({"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"})
    [violation] = check(pack.no_wildcard_iam, "aws:iam/role:Role", {"assumeRolePolicy": trust, "inlinePolicies": inline})
    assert "inlinePolicies 'admin'" in violation and "wildcard action" in violation
    assert check(pack.no_wildcard_iam, "aws:iam/role:Role", {"assumeRolePolicy": trust}) == []


def test_an_unknown_document_in_preview_defers_to_the_engine():
    # The analyzer reports UnknownValueError as "can't run policy during preview" (advisory).
    with pytest.raises(pulumi_policy.proxy.UnknownValueError):
        check(pack.no_wildcard_iam, ROLE_POLICY, {"role": "r", "policy": UNKNOWN_STRING_VALUE})


# --- the pack and the program ------------------------------------------------------------------

def test_pack_entry_point_registers_every_policy_as_mandatory(monkeypatch):
    made = {}
    monkeypatch.setattr(pulumi_policy, "PolicyPack", lambda **kwargs: made.update(kwargs))  # it would serve forever
    runpy.run_path(str(PROJECT_DIR / "policy" / "__main__.py"))
    assert made["policies"] is pack.POLICIES and made["enforcement_level"] == EnforcementLevel.MANDATORY
    names = [p.name for p in pack.POLICIES]
    assert len(set(names)) == len(names) == 7
    assert all(p.enforcement_level == EnforcementLevel.MANDATORY for p in pack.POLICIES)


def as_policy_resources(run: ProgramRun) -> list[PolicyResource]:
    """The program's resources as AnalyzeStack sees them: outputs as props, `bucket` linked by dependency."""
    by_id = {r.id: r for r in run.of_type(BUCKET)}
    buckets = {r.id: stack_resource(r.type, r.state, r.name) for r in by_id.values()}
    out = list(buckets.values())
    for r in run.resources:
        if r.type != BUCKET and r.type.startswith("aws:"):
            out.append(stack_resource(r.type, r.state, r.name, buckets.get(r.inputs.get("bucket"))))
    return out


@pytest.mark.parametrize("run_name", ["dev", "prod", "fixture_run"])
def test_the_program_passes_every_policy(run_name, request):
    run: ProgramRun = request.getfixturevalue(run_name)
    for policy in pack.POLICIES:
        if isinstance(policy, StackValidationPolicy):
            assert check_stack(policy, as_policy_resources(run)) == [], policy.name
        else:
            for r in run.resources:
                assert check(policy, r.type, r.inputs, r.name) == [], (policy.name, r.name)


def test_the_program_would_fail_the_pack_if_a_store_lost_its_settings(dev):
    resources = [r for r in as_policy_resources(dev) if r.resource_type not in {VERSIONING, LIFECYCLE, PAB}]
    assert len(check_stack(pack.artifact_versioning, resources)) == 1
    assert len(check_stack(pack.evidence_lifecycle, resources)) == 1
    assert len(check_stack(pack.public_access_block_required, resources)) == 2
