"""EvidenceStore: the bucket devices upload event clips and JSON to, under `<site>/<device>/<event>/`."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from .common import child
from .storage import secure_bucket


@dataclass(frozen=True)
class EvidenceStoreArgs:
    environment: str
    expiry_days: int
    """Evidence (often personal data: people on camera) is deleted this many days after upload."""
    archive_days: int | None = None
    """If set, objects move to `archive_class` this many days after upload (before expiry)."""
    archive_class: str = "GLACIER_IR"


class EvidenceStore(pulumi.ComponentResource):
    """KMS-encrypted, private, TLS-only, and expiring.

    Versioning stays off on purpose: with it, an expired object would linger as a non-current
    version, and evidence must really be gone after `expiry_days`.

    Outputs:
        bucket_name: the S3 bucket name (the device app's evidence store).
        bucket_arn: its ARN.
        kms_key_arn: the KMS key objects are encrypted with (writers need kms:GenerateDataKey on it).
    """

    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    kms_key_arn: pulumi.Output[str]

    def __init__(self, name: str, args: EvidenceStoreArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("edgecv:cloud:EvidenceStore", name, None, opts)
        store = secure_bucket(name, store="evidence", environment=args.environment, parent=self)
        expire: dict = {
            "id": "expire-evidence",
            "status": "Enabled",
            "filter": {},
            "expiration": {"days": args.expiry_days},
        }
        if args.archive_days is not None:
            expire["transitions"] = [{"days": args.archive_days, "storage_class": args.archive_class}]
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=store.bucket.id,
            rules=[
                expire,
                {
                    "id": "abort-incomplete-uploads",
                    "status": "Enabled",
                    "filter": {},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 2},
                },
            ],
            opts=child(self),
        )
        self.bucket_name = store.bucket.bucket
        self.bucket_arn = store.bucket.arn
        self.kms_key_arn = store.key.arn
        self.register_outputs(
            {"bucket_name": self.bucket_name, "bucket_arn": self.bucket_arn, "kms_key_arn": self.kms_key_arn}
        )
