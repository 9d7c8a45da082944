"""The whole stack: four components wired together, and the outputs the rest of the repo reads."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from . import config as stack_config
from .artifact_store import ArtifactStore, ArtifactStoreArgs
from .common import AwsContext, tags
from .evidence_store import EvidenceStore, EvidenceStoreArgs
from .identities import Identities, IdentitiesArgs
from .rules import load_rule_namespaces
from .telemetry import Telemetry, TelemetryArgs


def outputs_parameter_name(environment: str) -> str:
    return f"/edgecv/{environment}/cloud-outputs"


def build() -> dict[str, pulumi.Input]:
    """Declare every resource; return the stack outputs (exported by __main__.py)."""
    cfg = stack_config.load(pulumi.get_stack())
    env = cfg.environment
    region = pulumi.Config("aws").require("region")
    caller = aws.get_caller_identity_output()
    ctx = AwsContext(account_id=caller.account_id, region=region, partition=aws.get_partition_output().partition)

    artifacts = ArtifactStore(f"edgecv-{env}-artifacts", ArtifactStoreArgs(
        environment=env, lock_days=cfg.artifact_lock_days, noncurrent_days=cfg.artifact_noncurrent_days))
    evidence = EvidenceStore(f"edgecv-{env}-evidence", EvidenceStoreArgs(
        environment=env, expiry_days=cfg.evidence_expiry_days, archive_days=cfg.evidence_archive_days,
        archive_class=cfg.evidence_archive_class))
    telemetry = Telemetry(f"edgecv-{env}-telemetry", TelemetryArgs(
        environment=env, aws=ctx, log_retention_days=cfg.log_retention_days,
        rule_namespaces=load_rule_namespaces(cfg.rule_files())))
    identities = Identities(f"edgecv-{env}-identities", IdentitiesArgs(
        environment=env, aws=ctx,
        artifact_bucket_arn=artifacts.bucket_arn, artifact_kms_key_arn=artifacts.kms_key_arn,
        evidence_bucket_arn=evidence.bucket_arn, evidence_kms_key_arn=evidence.kms_key_arn,
        workspace_arn=telemetry.workspace_arn, outputs_parameter_name=outputs_parameter_name(env),
        github_repo=cfg.github_repo, github_branch=cfg.github_branch,
        github_oidc_provider_arn=cfg.github_oidc_provider_arn,
        device_ca_pca_arn=cfg.device_ca.pca_arn, device_ca_bundle_pem=cfg.device_ca.bundle_pem(),
        device_session_seconds=cfg.device_session_seconds))

    outputs: dict[str, pulumi.Input] = {
        "environment": env,
        "region": region,
        "artifact_bucket": artifacts.bucket_name,
        "artifact_bucket_arn": artifacts.bucket_arn,
        "artifact_kms_key_arn": artifacts.kms_key_arn,
        "evidence_bucket": evidence.bucket_name,
        "evidence_bucket_arn": evidence.bucket_arn,
        "evidence_kms_key_arn": evidence.kms_key_arn,
        "prometheus_workspace_id": telemetry.workspace_id,
        "remote_write_url": telemetry.remote_write_url,
        "prometheus_query_url": telemetry.query_url,
        "alert_topic_arn": telemetry.alert_topic_arn,
        "alert_rule_namespaces": telemetry.rule_namespaces,
        "device_role_arn": identities.device_role_arn,
        "device_trust_anchor_arn": identities.trust_anchor_arn,
        "device_profile_arn": identities.device_profile_arn,
        "ci_role_arn": identities.ci_role_arn,
    }
    # The same outputs in SSM, for readers without access to the Pulumi state (CI, other accounts' tooling).
    parameter = aws.ssm.Parameter(
        "cloud-outputs",
        name=outputs_parameter_name(env),
        type="String",
        description=f"edgecv {env} stack outputs (JSON), written by pulumi/",
        value=pulumi.Output.json_dumps(outputs),
        tags=tags(env),
    )
    outputs["outputs_parameter"] = parameter.name
    return outputs
