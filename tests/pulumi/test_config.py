"""Bad stack configuration and bad rule files fail the program with the file and the key named."""

from __future__ import annotations

import sys

import pytest

from .harness import FIXTURES, PROJECT_DIR, run_program, stack_config

sys.path.insert(0, str(PROJECT_DIR))
from edgecv_cloud.config import ConfigError, parse  # noqa: E402
from edgecv_cloud.rules import RuleFileError, load_rule_file, load_rule_namespaces  # noqa: E402

GOOD = {"githubRepo": "org/repo", "deviceCa": '{"pcaArn": "arn:aws:acm-pca:eu-west-1:111122223333:certificate-authority/x"}'}


def error(values: dict, stack: str = "dev") -> str:
    with pytest.raises(ConfigError) as exc:
        parse(values, stack)
    return str(exc.value)


def test_defaults_fill_in_what_a_stack_leaves_out():
    cfg = parse(GOOD, "staging")
    assert cfg.environment == "staging"
    assert cfg.artifact_noncurrent_days >= cfg.artifact_lock_days
    assert cfg.github_branch == "main"


@pytest.mark.parametrize(("values", "key", "words"), [
    ({"deviceCa": GOOD["deviceCa"]}, "edgecv-cloud:githubRepo", "Field required"),
    ({**GOOD, "githubRepo": "not a repo"}, "edgecv-cloud:githubRepo", "pattern"),
    ({**GOOD, "artifactLockDay": "30"}, "edgecv-cloud:artifactLockDay", "Extra inputs are not permitted"),
    ({**GOOD, "artifactLockDays": "zero"}, "edgecv-cloud:artifactLockDays", "valid integer"),
    ({**GOOD, "artifactLockDays": "60", "artifactNoncurrentDays": "30"}, "edgecv-cloud", "artifactNoncurrentDays (30)"),
    ({**GOOD, "evidenceExpiryDays": "30", "evidenceArchiveDays": "30"}, "edgecv-cloud", "evidenceArchiveDays (30)"),
    ({**GOOD, "evidenceArchiveDays": "7", "evidenceExpiryDays": "90", "evidenceArchiveClass": "STANDARD_IA"},
     "edgecv-cloud", "30 days at the earliest"),
    # Archived at 30, gone at 90: 60 days in GLACIER_IR, billed 90 (prod had exactly this).
    ({**GOOD, "evidenceArchiveDays": "30", "evidenceExpiryDays": "90", "evidenceArchiveClass": "GLACIER_IR"},
     "edgecv-cloud", "GLACIER_IR bills at least 90 days per object, but evidence stays there 60 days"),
    ({**GOOD, "evidenceArchiveDays": "0", "evidenceExpiryDays": "179", "evidenceArchiveClass": "DEEP_ARCHIVE"},
     "edgecv-cloud", "DEEP_ARCHIVE bills at least 180 days"),
    ({**GOOD, "evidenceArchiveDays": "30", "evidenceExpiryDays": "59", "evidenceArchiveClass": "STANDARD_IA"},
     "edgecv-cloud", "STANDARD_IA bills at least 30 days"),
    ({**GOOD, "grafana": "true"}, "edgecv-cloud:grafana", "no longer makes a managed Grafana"),
    ({**GOOD, "evidenceArchiveClass": "TAPE"}, "edgecv-cloud:evidenceArchiveClass", "GLACIER_IR"),
    ({**GOOD, "logRetentionDays": "10"}, "edgecv-cloud", "logRetentionDays 10"),
    ({**GOOD, "deviceCa": "{}"}, "edgecv-cloud:deviceCa", "exactly one of pcaArn or certificateBundleFile"),
    ({**GOOD, "deviceCa": '{"pcaArn": "arn:aws:iam::1:role/x"}'}, "edgecv-cloud:deviceCa.pcaArn", "pattern"),
])
def test_bad_values_name_the_stack_file_and_key(values, key, words):
    message = error(values, "prod")
    assert message.startswith(f"pulumi/Pulumi.prod.yaml: {key}: "), message
    assert words in message


def test_missing_ca_bundle_file_is_named(tmp_path):
    cfg = parse({**GOOD, "deviceCa": f'{{"certificateBundleFile": "{tmp_path}/nope.pem"}}'}, "dev")
    with pytest.raises(ConfigError, match=r"deviceCa.certificateBundleFile: .*/nope.pem: no such file"):
        cfg.device_ca.bundle_pem()
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n...\n")
    cfg = parse({**GOOD, "deviceCa": f'{{"certificateBundleFile": "{tmp_path}/key.pem"}}'}, "dev")
    with pytest.raises(ConfigError, match="no PEM certificate in it"):
        cfg.device_ca.bundle_pem()


def test_a_typo_in_the_stack_file_stops_the_program():
    with pytest.raises(ConfigError, match="edgecv-cloud:evidenceExpiry: Extra inputs"):
        run_program("dev", stack_config("dev", evidenceExpiry=30))


@pytest.mark.parametrize(("text", "words"), [
    ("groups: [\n", "not valid YAML"),
    ("rules: []\n", "groups: a rule file needs a top-level 'groups' list"),
    ("groups:\n  - rules: []\n", "groups[0].name: every group needs a name"),
    ("groups:\n  - name: a\n", "groups[0].rules: group 'a' needs a 'rules' list"),
    ("groups:\n  - name: a\n    rules:\n      - alert: X\n", "groups[0].rules[0]: a rule needs 'alert' or 'record', and 'expr'"),
    ("groups:\n  - {name: a, rules: []}\n  - {name: a, rules: []}\n", "group names repeat"),
])
def test_bad_rule_files_are_named(tmp_path, text, words):
    path = tmp_path / "broken.rules.yml"
    path.write_text(text)
    with pytest.raises(RuleFileError) as exc:
        load_rule_file(path)
    assert str(exc.value).startswith(f"{path}: ")
    assert words in str(exc.value)


def test_rule_namespace_names_must_suit_amp_and_be_unique(tmp_path):
    body = (FIXTURES / "rules" / "fleet-fixture.rules.yml").read_text()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "fleet.rules.yml").write_text(body)
    (tmp_path / "fleet.rules.yaml").write_text(body)
    with pytest.raises(RuleFileError, match="namespace 'fleet' is also made by"):
        load_rule_namespaces([tmp_path / "a" / "fleet.rules.yml", tmp_path / "fleet.rules.yaml"])
    (tmp_path / "bad name!.rules.yml").write_text(body)
    with pytest.raises(RuleFileError, match="which AMP does not accept"):
        load_rule_file(tmp_path / "bad name!.rules.yml")


def test_a_bad_rule_file_stops_the_program(tmp_path):
    (tmp_path / "broken.rules.yml").write_text("groups: nope\n")
    with pytest.raises(RuleFileError, match="broken.rules.yml: groups"):
        run_program("dev", stack_config("dev", alertRulesGlob=str(tmp_path / "*.rules.yml")))
