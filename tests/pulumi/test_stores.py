"""ArtifactStore and EvidenceStore as the real program declares them (pulumi mocks, offline)."""

from __future__ import annotations

import pytest

from .harness import ProgramRun, Resource, config_value

BUCKET = "aws:s3/bucket:Bucket"
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
ENCRYPTION = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
PUBLIC_ACCESS = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
OBJECT_LOCK = "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration"
POLICY = "aws:s3/bucketPolicy:BucketPolicy"
KMS_KEY = "aws:kms/key:Key"


def bucket(run: ProgramRun, store: str) -> Resource:
    found = [b for b in run.of_type(BUCKET) if b.inputs["tags"].get("edgecv:store") == store]
    assert len(found) == 1, f"one {store} bucket expected, got {[b.name for b in found]}"
    return found[0]


def only(run: ProgramRun, token: str, b: Resource) -> Resource:
    found = run.for_bucket(token, b)
    assert len(found) == 1, f"{b.name}: one {token} expected, got {len(found)}"
    return found[0]


def rule(lifecycle: Resource, rule_id: str) -> dict:
    return next(r for r in lifecycle.inputs["rules"] if r["id"] == rule_id)


def test_two_buckets_and_outputs_name_them(stack):
    _, run = stack
    assert len(run.of_type(BUCKET)) == 2
    assert run.outputs["artifact_bucket"] == bucket(run, "artifact").state["bucket"]
    assert run.outputs["evidence_bucket"] == bucket(run, "evidence").state["bucket"]
    assert run.outputs["artifact_bucket"] != run.outputs["evidence_bucket"]


@pytest.mark.parametrize("store", ["artifact", "evidence"])
def test_kms_encryption_with_the_stores_own_rotating_key(stack, store):
    _, run = stack
    b = bucket(run, store)
    rules = only(run, ENCRYPTION, b).inputs["rules"]
    assert len(rules) == 1
    default = rules[0]["applyServerSideEncryptionByDefault"]
    assert default["sseAlgorithm"] == "aws:kms"
    key = next(k for k in run.of_type(KMS_KEY) if k.state["arn"] == default["kmsMasterKeyId"])
    assert key.inputs["enableKeyRotation"] is True
    assert key.inputs["tags"]["edgecv:store"] == store
    assert run.outputs[f"{store}_kms_key_arn"] == key.state["arn"]


@pytest.mark.parametrize("store", ["artifact", "evidence"])
def test_public_access_block_sets_all_four_flags(stack, store):
    _, run = stack
    block = only(run, PUBLIC_ACCESS, bucket(run, store)).inputs
    for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
        assert block[flag] is True, flag


@pytest.mark.parametrize("store", ["artifact", "evidence"])
def test_acls_are_disabled(stack, store):
    _, run = stack
    ownership = only(run, "aws:s3/bucketOwnershipControls:BucketOwnershipControls", bucket(run, store))
    assert ownership.inputs["rule"]["objectOwnership"] == "BucketOwnerEnforced"
    assert "acl" not in bucket(run, store).inputs


@pytest.mark.parametrize("store", ["artifact", "evidence"])
def test_bucket_policy_denies_plain_http_and_allows_nothing(stack, store):
    _, run = stack
    b = bucket(run, store)
    doc = only(run, POLICY, b).doc("policy")
    arn = b.state["arn"]
    tls = [s for s in doc["Statement"] if s["Condition"].get("Bool", {}).get("aws:SecureTransport") == "false"]
    assert len(tls) == 1
    assert tls[0]["Effect"] == "Deny" and tls[0]["Principal"] == "*" and tls[0]["Action"] == "s3:*"
    assert set(tls[0]["Resource"]) == {arn, f"{arn}/*"}
    assert all(s["Effect"] == "Deny" for s in doc["Statement"])


def test_artifact_bucket_is_versioned(stack):
    _, run = stack
    versioning = only(run, VERSIONING, bucket(run, "artifact"))
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"


def test_artifact_object_lock_is_governance_mode_with_configured_retention(stack):
    name, run = stack
    b = bucket(run, "artifact")
    assert b.inputs["objectLockEnabled"] is True
    lock = only(run, OBJECT_LOCK, b).inputs
    assert lock["objectLockEnabled"] == "Enabled"
    assert lock["rule"]["defaultRetention"]["mode"] == "GOVERNANCE"
    assert lock["rule"]["defaultRetention"]["days"] == config_value(name, "artifactLockDays")
    assert "years" not in lock["rule"]["defaultRetention"]


def test_artifact_noncurrent_versions_expire_after_configured_days(stack):
    name, run = stack
    lifecycle = only(run, LIFECYCLE, bucket(run, "artifact"))
    noncurrent = rule(lifecycle, "expire-noncurrent-versions")
    assert noncurrent["status"] == "Enabled" and noncurrent["filter"] == {}
    days = noncurrent["noncurrentVersionExpiration"]["noncurrentDays"]
    assert days == config_value(name, "artifactNoncurrentDays")
    assert days >= config_value(name, "artifactLockDays")
    # Current versions never expire: a live model must not disappear.
    assert "days" not in noncurrent.get("expiration", {})


def test_evidence_expires_after_configured_days(stack):
    name, run = stack
    expire = rule(only(run, LIFECYCLE, bucket(run, "evidence")), "expire-evidence")
    assert expire["status"] == "Enabled" and expire["filter"] == {}
    assert expire["expiration"]["days"] == config_value(name, "evidenceExpiryDays")


def test_evidence_archive_transition_only_when_configured(stack):
    name, run = stack
    expire = rule(only(run, LIFECYCLE, bucket(run, "evidence")), "expire-evidence")
    archive_days = config_value(name, "evidenceArchiveDays")
    if archive_days is None:
        assert "transitions" not in expire
    else:
        assert expire["transitions"] == [
            {"days": archive_days, "storageClass": config_value(name, "evidenceArchiveClass")}]


def test_evidence_bucket_is_not_versioned(stack):
    # Versioning would keep expired evidence as non-current versions.
    _, run = stack
    assert run.for_bucket(VERSIONING, bucket(run, "evidence")) == []
    assert run.for_bucket(OBJECT_LOCK, bucket(run, "evidence")) == []


def test_incomplete_uploads_are_cleaned_up(stack):
    _, run = stack
    for store in ("artifact", "evidence"):
        abort = rule(only(run, LIFECYCLE, bucket(run, store)), "abort-incomplete-uploads")
        assert 1 <= abort["abortIncompleteMultipartUpload"]["daysAfterInitiation"] <= 7
