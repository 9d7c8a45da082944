"""The private, KMS-encrypted, TLS-only S3 bucket both stores are built on.

pulumi-aws v7 splits a bucket's settings into separate resources (the inline arguments of
`aws.s3.Bucket` are deprecated); the policy pack checks the same split resources.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from .common import child, policy_json, tags


@dataclass(frozen=True)
class SecureBucket:
    bucket: aws.s3.Bucket
    key: aws.kms.Key
    public_access_block: aws.s3.BucketPublicAccessBlock
    encryption: aws.s3.BucketServerSideEncryptionConfiguration
    policy: aws.s3.BucketPolicy


def tls_only_statements(bucket_arn: pulumi.Input[str], key_arn: pulumi.Input[str]) -> list[dict]:
    """Deny plain HTTP, uploads that ask for anything but SSE-KMS, and SSE-KMS with any key but the store's.

    An upload naming no encryption gets the bucket default (the store's key). The key pin is its own
    statement: conditions inside one statement are ANDed, so folding it into DenyNonKmsEncryption would
    deny only requests that are both non-KMS and name another key.
    """
    objects = pulumi.Output.concat(bucket_arn, "/*")
    return [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, objects],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        {
            "Sid": "DenyNonKmsEncryption",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": objects,
            "Condition": {"StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption": "aws:kms"}},
        },
        {
            "Sid": "DenyOtherKmsKeys",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": objects,
            "Condition": {"StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption-aws-kms-key-id": key_arn}},
        },
    ]


def secure_bucket(name: str, *, store: str, environment: str, parent: pulumi.Resource,
                  object_lock: bool = False) -> SecureBucket:
    """A bucket with its own rotating KMS key, every public-access flag set, ACLs off, TLS only."""
    key = aws.kms.Key(
        f"{name}-key",
        description=f"edgecv {environment} {store} store",
        enable_key_rotation=True,
        deletion_window_in_days=30,
        tags=tags(environment, **{"edgecv:store": store}),
        # Deleting the key makes every object in the bucket unreadable: never by a stray `pulumi up`.
        opts=child(parent, protect=True),
    )
    aws.kms.Alias(f"{name}-key-alias", name=f"alias/edgecv-{environment}-{store}", target_key_id=key.key_id,
                  opts=child(parent))
    bucket = aws.s3.Bucket(
        name,
        # Object lock can only be switched on when the bucket is created.
        object_lock_enabled=object_lock or None,
        force_destroy=False,
        tags=tags(environment, **{"edgecv:store": store}),
        opts=child(parent, protect=environment == "prod"),
    )
    aws.s3.BucketOwnershipControls(
        f"{name}-ownership", bucket=bucket.id, rule={"object_ownership": "BucketOwnerEnforced"}, opts=child(parent)
    )
    public_access_block = aws.s3.BucketPublicAccessBlock(
        f"{name}-public-access",
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
        opts=child(parent),
    )
    encryption = aws.s3.BucketServerSideEncryptionConfiguration(
        f"{name}-encryption",
        bucket=bucket.id,
        rules=[{
            "apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms", "kms_master_key_id": key.arn},
            # One data key per bucket, not per object: fewer KMS calls from the fleet.
            "bucket_key_enabled": True,
        }],
        opts=child(parent),
    )
    policy = aws.s3.BucketPolicy(
        f"{name}-policy",
        bucket=bucket.id,
        policy=policy_json(*tls_only_statements(bucket.arn, key.arn)),
        # S3 rejects concurrent bucket-level changes; the access block goes first.
        opts=child(parent, depends_on=[public_access_block]),
    )
    return SecureBucket(bucket, key, public_access_block, encryption, policy)
