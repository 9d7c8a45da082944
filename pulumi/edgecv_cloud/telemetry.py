"""Telemetry: the Amazon Managed Service for Prometheus workspace the fleet remote-writes to."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import yaml

from .common import AwsContext, child, policy_json, tags
from .rules import RuleNamespace


@dataclass(frozen=True)
class TelemetryArgs:
    environment: str
    aws: AwsContext
    log_retention_days: int
    rule_namespaces: list[RuleNamespace] = field(default_factory=list)


class Telemetry(pulumi.ComponentResource):
    """AMP workspace + rule groups from the repo's alert rules + alert manager -> SNS, logs to CloudWatch.

    The alert manager sends to an SNS topic (KMS-encrypted); subscribe on-call tooling to it outside
    this stack. AMP's rule and alert-manager errors go to a CloudWatch log group with retention.

    No managed Grafana: an Amazon Managed Grafana workspace is billed per user and is empty until a
    data source and the dashboards are provisioned into it, which needs the pulumi-grafana provider
    (not in this repository's offline package set, so it could not be tested here). The dashboards
    (roles/telemetry/files/dashboards) import into any Grafana whose Prometheus data source points at
    `query_url` with SigV4 auth (service `aps`); see pulumi/README.md.

    Outputs:
        workspace_id, workspace_arn: the AMP workspace.
        remote_write_url: where device Prometheus agents remote-write (SigV4, service `aps`).
        query_url: the workspace's Prometheus query endpoint (Grafana, PromQL analysis of rollouts).
        alert_topic_arn: the SNS topic alerts go to.
        log_group_name: AMP's log group.
        rule_namespaces: names of the rule group namespaces made from the rule files.
    """

    workspace_id: pulumi.Output[str]
    workspace_arn: pulumi.Output[str]
    remote_write_url: pulumi.Output[str]
    query_url: pulumi.Output[str]
    alert_topic_arn: pulumi.Output[str]
    log_group_name: pulumi.Output[str]
    rule_namespaces: list[str]

    def __init__(self, name: str, args: TelemetryArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("edgecv:cloud:Telemetry", name, None, opts)
        env, ctx = args.environment, args.aws
        log_group_name = f"/aws/vendedlogs/edgecv/{env}/prometheus"
        key = aws.kms.Key(
            f"{name}-key",
            description=f"edgecv {env} telemetry (alert topic, AMP logs)",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=self._key_policy(ctx, log_group_name),
            tags=tags(env),
            # The topic and the log group are unreadable without it.
            opts=child(self, protect=True),
        )
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-logs",
            name=log_group_name,
            retention_in_days=args.log_retention_days,
            kms_key_id=key.arn,
            tags=tags(env),
            opts=child(self, protect=True),
        )
        workspace = aws.amp.Workspace(
            f"{name}-workspace",
            alias=f"edgecv-{env}",
            logging_configuration={"log_group_arn": log_group.arn.apply(lambda arn: f"{arn}:*")},
            tags=tags(env),
            # Replacing the workspace loses the fleet's metric history and changes every device's URL.
            opts=child(self, protect=True),
        )
        topic = aws.sns.Topic(f"{name}-alerts", kms_master_key_id=key.arn, tags=tags(env), opts=child(self))
        aws.sns.TopicPolicy(
            f"{name}-alerts-policy",
            arn=topic.arn,
            policy=policy_json({
                "Sid": "AllowAmpAlertManager",
                "Effect": "Allow",
                "Principal": {"Service": "aps.amazonaws.com"},
                "Action": ["sns:Publish", "sns:GetTopicAttributes"],
                "Resource": topic.arn,
                "Condition": {
                    "ArnEquals": {"aws:SourceArn": workspace.arn},
                    "StringEquals": {"aws:SourceAccount": ctx.account_id},
                },
            }),
            opts=child(self),
        )
        aws.amp.AlertManagerDefinition(
            f"{name}-alertmanager",
            workspace_id=workspace.id,
            definition=topic.arn.apply(lambda arn: alertmanager_definition(arn, ctx.region, env)),
            opts=child(self),
        )
        for ns in args.rule_namespaces:
            aws.amp.RuleGroupNamespace(
                f"{name}-rules-{ns.name}", name=ns.name, workspace_id=workspace.id, data=ns.data,
                tags=tags(env), opts=child(self),
            )

        self.workspace_id = workspace.id
        self.workspace_arn = workspace.arn
        # prometheus_endpoint ends with a slash: https://aps-workspaces.<region>.amazonaws.com/workspaces/ws-.../
        self.query_url = workspace.prometheus_endpoint
        self.remote_write_url = workspace.prometheus_endpoint.apply(lambda u: u.rstrip("/") + "/api/v1/remote_write")
        self.alert_topic_arn = topic.arn
        self.log_group_name = log_group.name
        self.rule_namespaces = [ns.name for ns in args.rule_namespaces]
        self.register_outputs({
            "workspace_id": self.workspace_id,
            "remote_write_url": self.remote_write_url,
            "alert_topic_arn": self.alert_topic_arn,
            "rule_namespaces": self.rule_namespaces,
        })

    @staticmethod
    def _key_policy(ctx: AwsContext, log_group_name: str) -> pulumi.Output[str]:
        # A key policy's Resource "*" means "this key". The account keeps control through IAM; AMP may
        # use the key to publish to the encrypted topic, CloudWatch Logs only for our log group.
        return policy_json(
            {
                "Sid": "AccountAdministersKeyThroughIam",
                "Effect": "Allow",
                "Principal": {"AWS": ctx.root_principal()},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "AmpPublishesToEncryptedTopic",
                "Effect": "Allow",
                "Principal": {"Service": "aps.amazonaws.com"},
                "Action": ["kms:GenerateDataKey*", "kms:Decrypt"],
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:SourceAccount": ctx.account_id}},
            },
            {
                "Sid": "CloudWatchLogsEncryptsOurLogGroup",
                "Effect": "Allow",
                "Principal": {"Service": f"logs.{ctx.region}.amazonaws.com"},
                "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
                "Resource": "*",
                "Condition": {"ArnEquals": {
                    "kms:EncryptionContext:aws:logs:arn": ctx.arn("logs", f"log-group:{log_group_name}"),
                }},
            },
        )


def alertmanager_definition(topic_arn: str, region: str, environment: str) -> str:
    """AMP's alert manager definition: every alert to the SNS topic, grouped per alert and site."""
    config = {
        "route": {"receiver": "sns", "group_by": ["alertname", "site"], "group_wait": "30s",
                  "group_interval": "5m", "repeat_interval": "4h"},
        "receivers": [{
            "name": "sns",
            "sns_configs": [{
                "topic_arn": topic_arn,
                "sigv4": {"region": region},
                "attributes": {"environment": environment},
            }],
        }],
    }
    # AMP wants the Alertmanager config as a string under alertmanager_config: a literal block reads best.
    return "alertmanager_config: |\n" + textwrap.indent(yaml.safe_dump(config, sort_keys=False), "  ")
