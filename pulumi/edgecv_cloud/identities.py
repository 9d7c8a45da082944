"""Identities: the device role (IAM Roles Anywhere) and the CI role (GitHub OIDC), least privilege.

Devices authenticate with their X.509 certificate (CN = device id, OU = site id) through IAM Roles
Anywhere; the session carries the certificate's subject as principal tags, so one role serves the
whole fleet and still confines each device to its own evidence prefix `<site>/<device>/`.
See pulumi/README.md for why Roles Anywhere rather than the IoT credentials provider.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from .common import AwsContext, child, policy_json, tags

GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"
# The evidence prefix a device may write: <site>/<device>/ from its certificate's OU and CN.
DEVICE_EVIDENCE_PREFIX = "${aws:PrincipalTag/x509Subject/OU}/${aws:PrincipalTag/x509Subject/CN}"
# Where CI publishes model artifacts in the artifact bucket.
ARTIFACT_PREFIX = "models"


@dataclass(frozen=True)
class IdentitiesArgs:
    environment: str
    aws: AwsContext
    artifact_bucket_arn: pulumi.Input[str]
    artifact_kms_key_arn: pulumi.Input[str]
    evidence_bucket_arn: pulumi.Input[str]
    evidence_kms_key_arn: pulumi.Input[str]
    workspace_arn: pulumi.Input[str]
    outputs_parameter_name: str
    """The SSM parameter the stack writes its outputs to; CI may read it."""
    github_repo: str
    github_branch: str
    device_ca_pca_arn: str | None = None
    device_ca_bundle_pem: str | None = None
    device_session_seconds: int = 3600
    github_oidc_provider_arn: str | None = None
    """An existing provider for token.actions.githubusercontent.com (one per account); None makes one."""


class Identities(pulumi.ComponentResource):
    """Outputs:
        device_role_arn: the role devices assume (via the profile below).
        trust_anchor_arn, device_profile_arn: what `aws_signing_helper credential-process` needs on a device.
        ci_role_arn: the role GitHub Actions assumes from `github_repo` on `github_branch`.
    """

    device_role_arn: pulumi.Output[str]
    trust_anchor_arn: pulumi.Output[str]
    device_profile_arn: pulumi.Output[str]
    ci_role_arn: pulumi.Output[str]

    def __init__(self, name: str, args: IdentitiesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("edgecv:cloud:Identities", name, None, opts)
        if (args.device_ca_pca_arn is None) == (args.device_ca_bundle_pem is None):
            raise ValueError("Identities: give exactly one of device_ca_pca_arn, device_ca_bundle_pem")
        self._device(name, args)
        self._ci(name, args)
        self.register_outputs({
            "device_role_arn": self.device_role_arn,
            "trust_anchor_arn": self.trust_anchor_arn,
            "device_profile_arn": self.device_profile_arn,
            "ci_role_arn": self.ci_role_arn,
        })

    def _device(self, name: str, args: IdentitiesArgs) -> None:
        env = args.environment
        if args.device_ca_pca_arn:
            source = {"source_type": "AWS_ACM_PCA", "source_data": {"acm_pca_arn": args.device_ca_pca_arn}}
        else:
            source = {"source_type": "CERTIFICATE_BUNDLE", "source_data": {"x509_certificate_data": args.device_ca_bundle_pem}}
        anchor = aws.rolesanywhere.TrustAnchor(
            f"{name}-devices-anchor", name=f"edgecv-{env}-devices", enabled=True, source=source, tags=tags(env),
            opts=child(self),
        )
        role = aws.iam.Role(
            f"{name}-device",
            description=f"edgecv {env} devices, via IAM Roles Anywhere",
            assume_role_policy=device_trust_policy(anchor.arn),
            max_session_duration=max(3600, args.device_session_seconds),
            tags=tags(env),
            opts=child(self),
        )
        aws.iam.RolePolicy(
            f"{name}-device-access",
            role=role.id,
            policy=device_access_policy(args),
            opts=child(self),
        )
        profile = aws.rolesanywhere.Profile(
            f"{name}-devices-profile",
            name=f"edgecv-{env}-devices",
            enabled=True,
            role_arns=[role.arn],
            duration_seconds=args.device_session_seconds,
            tags=tags(env),
            opts=child(self),
        )
        self.device_role_arn, self.trust_anchor_arn, self.device_profile_arn = role.arn, anchor.arn, profile.arn

    def _ci(self, name: str, args: IdentitiesArgs) -> None:
        env = args.environment
        provider_arn = args.github_oidc_provider_arn
        if provider_arn is None:
            provider_arn = aws.iam.OpenIdConnectProvider(
                f"{name}-github-oidc",
                url=f"https://{GITHUB_OIDC_HOST}",
                client_id_lists=["sts.amazonaws.com"],
                tags=tags(env),
                opts=child(self),
            ).arn
        role = aws.iam.Role(
            f"{name}-ci",
            description=f"edgecv {env} CI: publish model artifacts, read stack outputs",
            assume_role_policy=ci_trust_policy(provider_arn, args.github_repo, args.github_branch),
            max_session_duration=3600,
            tags=tags(env),
            opts=child(self),
        )
        aws.iam.RolePolicy(f"{name}-ci-access", role=role.id, policy=ci_access_policy(args), opts=child(self))
        self.ci_role_arn = role.arn


def device_trust_policy(anchor_arn: pulumi.Input[str]) -> pulumi.Output[str]:
    """Only sessions from our trust anchor, and only certificates that carry a site (OU) and device (CN)."""
    return policy_json({
        "Sid": "DevicesThroughRolesAnywhere",
        "Effect": "Allow",
        "Principal": {"Service": "rolesanywhere.amazonaws.com"},
        "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
        "Condition": {
            "ArnEquals": {"aws:SourceArn": anchor_arn},
            "Null": {"aws:PrincipalTag/x509Subject/CN": "false", "aws:PrincipalTag/x509Subject/OU": "false"},
        },
    })


def device_access_policy(args: IdentitiesArgs) -> pulumi.Output[str]:
    """Write own evidence, remote-write metrics. No read of the artifact bucket: the controller hands a
    device a short-lived presigned URL for the one artifact it installs (roles/triton/files/presign.py),
    so a stolen device certificate cannot download every model the fleet has ever shipped."""
    via_s3 = {"StringEquals": {"kms:ViaService": f"s3.{args.aws.region}.amazonaws.com"}}
    return policy_json(
        {
            "Sid": "WriteOwnEvidence",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": pulumi.Output.concat(args.evidence_bucket_arn, f"/{DEVICE_EVIDENCE_PREFIX}/*"),
        },
        {
            # GenerateDataKey for every put; Decrypt as well for multipart uploads (large clips).
            "Sid": "EncryptEvidence",
            "Effect": "Allow",
            "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
            "Resource": args.evidence_kms_key_arn,
            "Condition": via_s3,
        },
        {
            "Sid": "RemoteWriteMetrics",
            "Effect": "Allow",
            "Action": "aps:RemoteWrite",
            "Resource": args.workspace_arn,
        },
    )


def ci_trust_policy(provider_arn: pulumi.Input[str], repo: str, branch: str) -> pulumi.Output[str]:
    """GitHub's OIDC token for this repository's branch only (not forks, not pull requests)."""
    return policy_json({
        "Sid": "GitHubActionsOnBranch",
        "Effect": "Allow",
        "Principal": {"Federated": provider_arn},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {
            "StringEquals": {
                f"{GITHUB_OIDC_HOST}:aud": "sts.amazonaws.com",
                f"{GITHUB_OIDC_HOST}:sub": f"repo:{repo}:ref:refs/heads/{branch}",
            },
        },
    })


def ci_access_policy(args: IdentitiesArgs) -> pulumi.Output[str]:
    """Publish (never delete, never shorten a lock) model artifacts; read the stack's outputs parameter."""
    return policy_json(
        {
            "Sid": "PublishModelArtifacts",
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:GetObject", "s3:GetObjectVersion"],
            "Resource": pulumi.Output.concat(args.artifact_bucket_arn, f"/{ARTIFACT_PREFIX}/*"),
        },
        {
            "Sid": "ListModelArtifacts",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": args.artifact_bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [f"{ARTIFACT_PREFIX}/*"]}},
        },
        {
            "Sid": "EncryptModelArtifacts",
            "Effect": "Allow",
            "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
            "Resource": args.artifact_kms_key_arn,
            "Condition": {"StringEquals": {"kms:ViaService": f"s3.{args.aws.region}.amazonaws.com"}},
        },
        {
            "Sid": "ReadStackOutputs",
            "Effect": "Allow",
            "Action": "ssm:GetParameter",
            "Resource": args.aws.arn("ssm", f"parameter{args.outputs_parameter_name}"),
        },
    )
