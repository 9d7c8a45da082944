"""ArtifactStore: the bucket model artifacts ship from (s3:// URIs in model manifests)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from .common import child
from .storage import secure_bucket


@dataclass(frozen=True)
class ArtifactStoreArgs:
    environment: str
    lock_days: int
    """Object-lock retention (GOVERNANCE mode) of every object version."""
    noncurrent_days: int
    """Days after which a replaced (non-current) version is deleted, once its lock has run out."""


class ArtifactStore(pulumi.ComponentResource):
    """Versioned, object-locked, KMS-encrypted, private, TLS-only.

    A shipped model cannot be silently replaced: every put makes a new version, and each version is
    locked in governance mode for `lock_days` (only a principal allowed s3:BypassGovernanceRetention,
    which no role here has, can remove it early).

    Outputs:
        bucket_name: the S3 bucket name (`s3://<bucket_name>/models/...` in manifests).
        bucket_arn: its ARN.
        kms_key_arn: the KMS key objects are encrypted with (readers need kms:Decrypt on it).
    """

    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    kms_key_arn: pulumi.Output[str]

    def __init__(self, name: str, args: ArtifactStoreArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("edgecv:cloud:ArtifactStore", name, None, opts)
        store = secure_bucket(name, store="artifact", environment=args.environment, parent=self, object_lock=True)
        versioning = aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=store.bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=child(self),
        )
        aws.s3.BucketObjectLockConfiguration(
            f"{name}-object-lock",
            bucket=store.bucket.id,
            object_lock_enabled="Enabled",
            rule={"default_retention": {"mode": "GOVERNANCE", "days": args.lock_days}},
            opts=child(self, depends_on=[versioning]),
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=store.bucket.id,
            rules=[
                {
                    "id": "expire-noncurrent-versions",
                    "status": "Enabled",
                    "filter": {},
                    "noncurrent_version_expiration": {"noncurrent_days": args.noncurrent_days},
                    "expiration": {"expired_object_delete_marker": True},
                },
                {
                    "id": "abort-incomplete-uploads",
                    "status": "Enabled",
                    "filter": {},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
                },
            ],
            opts=child(self, depends_on=[versioning]),
        )
        self.bucket_name = store.bucket.bucket
        self.bucket_arn = store.bucket.arn
        self.kms_key_arn = store.key.arn
        self.register_outputs(
            {"bucket_name": self.bucket_name, "bucket_arn": self.bucket_arn, "kms_key_arn": self.kms_key_arn}
        )
