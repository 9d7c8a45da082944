"""What keeps a stray `pulumi up` or a wrong profile from destroying data: protect, key pins, account pins."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from .harness import PROJECT_DIR

KMS_KEY = "aws:kms/key:Key"
WORKSPACE = "aws:amp/workspace:Workspace"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
BUCKET = "aws:s3/bucket:Bucket"
POLICY = "aws:s3/bucketPolicy:BucketPolicy"


def test_keys_workspace_and_log_group_are_protected_in_every_stack(stack):
    _, run = stack
    stateful = run.of_type(KMS_KEY) + run.of_type(WORKSPACE) + run.of_type(LOG_GROUP)
    assert len(stateful) == 5  # artifact, evidence and telemetry keys; the workspace; its log group
    unprotected = [r.name for r in stateful if r.opts is None or r.opts.protect is not True]
    assert unprotected == [], f"pulumi would delete these on a stray `up`/`destroy`: {unprotected}"


def test_buckets_are_protected_in_prod_only(stack):
    name, run = stack
    # dev buckets may be torn down with the stack; force_destroy stays off, so a full bucket still refuses.
    assert {b.opts.protect for b in run.of_type(BUCKET)} == {name == "prod"}
    assert {b.inputs.get("forceDestroy") for b in run.of_type(BUCKET)} == {False}


def test_options_are_captured_from_the_program_not_defaulted(dev):
    # The recorder must see real options: an unprotected child resource reads protect=None/False, not True.
    alias = dev.one("aws:kms/alias:Alias", "artifacts-key-alias")
    assert alias.opts is not None and not alias.opts.protect


@pytest.mark.parametrize("store", ["artifact", "evidence"])
def test_uploads_must_use_kms_with_the_stores_own_key(stack, store):
    _, run = stack
    bucket = next(b for b in run.of_type(BUCKET) if b.inputs["tags"]["edgecv:store"] == store)
    key = next(k for k in run.of_type(KMS_KEY) if k.inputs["tags"].get("edgecv:store") == store)
    [policy] = run.for_bucket(POLICY, bucket)
    statements = {s["Sid"]: s for s in json.loads(policy.inputs["policy"])["Statement"]}
    objects = f"{bucket.state['arn']}/*"
    non_kms, other_key = statements["DenyNonKmsEncryption"], statements["DenyOtherKmsKeys"]
    for st in (non_kms, other_key):
        assert (st["Effect"], st["Principal"], st["Action"], st["Resource"]) == ("Deny", "*", "s3:PutObject", objects)
    # IfExists: an upload naming no encryption gets the bucket default (this key) and is let through.
    assert non_kms["Condition"] == {"StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption": "aws:kms"}}
    assert other_key["Condition"] == {
        "StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption-aws-kms-key-id": key.state["arn"]}}
    # Separate statements: one statement's conditions are ANDed, which would let another key through.
    assert len(non_kms["Condition"]["StringNotEqualsIfExists"]) == 1


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_each_stack_pins_the_account_its_arns_name(name):
    allowed = _raw(name).get("aws:allowedAccountIds")
    assert isinstance(allowed, list) and all(isinstance(a, str) and re.fullmatch(r"\d{12}", a) for a in allowed), \
        f"Pulumi.{name}.yaml: aws:allowedAccountIds must list 12-digit account ids as strings"
    named = set(re.findall(r"arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:(\d{12}):", (PROJECT_DIR / f"Pulumi.{name}.yaml").read_text()))
    assert named and set(allowed) == named


def test_the_stacks_pin_different_accounts():
    assert set(_raw("dev")["aws:allowedAccountIds"]).isdisjoint(_raw("prod")["aws:allowedAccountIds"])


def _raw(name: str) -> dict:
    return yaml.safe_load((PROJECT_DIR / f"Pulumi.{name}.yaml").read_text())["config"]
