"""Telemetry: AMP workspace, rule groups from the repo's rule files, alert manager, logs."""

from __future__ import annotations

import json

import yaml

from .harness import FIXTURES, REPO_ROOT, config_value, run_program, stack_config

RULES = "aws:amp/ruleGroupNamespace:RuleGroupNamespace"
WORKSPACE = "aws:amp/workspace:Workspace"


def test_remote_write_url_is_the_workspace_endpoint(stack):
    _, run = stack
    endpoint = run.one(WORKSPACE).state["prometheusEndpoint"]
    assert run.outputs["remote_write_url"] == endpoint.rstrip("/") + "/api/v1/remote_write"
    assert run.outputs["prometheus_query_url"] == endpoint
    assert run.outputs["prometheus_workspace_id"] == run.one(WORKSPACE).id


def test_rule_groups_are_loaded_from_the_rule_files(fixture_run):
    fixture = FIXTURES / "rules" / "fleet-fixture.rules.yml"
    [ns] = fixture_run.of_type(RULES)
    assert ns.inputs["name"] == "fleet-fixture"
    assert ns.inputs["data"] == fixture.read_text()
    assert ns.inputs["workspaceId"] == fixture_run.one(WORKSPACE).id
    assert [g["name"] for g in yaml.safe_load(ns.inputs["data"])["groups"]] == ["fixture-device-health"]
    assert fixture_run.outputs["alert_rule_namespaces"] == ["fleet-fixture"]


def test_committed_stacks_load_whatever_the_telemetry_role_ships(stack):
    name, run = stack
    files = sorted(REPO_ROOT.glob("roles/telemetry/files/rules/*.rules.yml"))
    namespaces = {r.inputs["name"]: r.inputs["data"] for r in run.of_type(RULES)}
    assert sorted(namespaces) == sorted(f.name.removesuffix(".yml").removesuffix(".rules") for f in files)
    for f in files:
        assert f.read_text() in namespaces.values()


def test_no_rule_files_still_gives_a_working_workspace(tmp_path):
    run = run_program("dev", stack_config("dev", alertRulesGlob=str(tmp_path / "*.rules.yml")))
    assert run.of_type(RULES) == []
    assert run.outputs["alert_rule_namespaces"] == []
    assert run.one(WORKSPACE) and run.one("aws:amp/alertManagerDefinition:AlertManagerDefinition")
    assert run.outputs["remote_write_url"].endswith("/api/v1/remote_write")


def test_alert_manager_sends_to_the_encrypted_topic(stack):
    name, run = stack
    definition = yaml.safe_load(run.one("aws:amp/alertManagerDefinition:AlertManagerDefinition").inputs["definition"])
    config = yaml.safe_load(definition["alertmanager_config"])
    topic = run.one("aws:sns/topic:Topic")
    [receiver] = config["receivers"]
    assert config["route"]["receiver"] == receiver["name"]
    [sns] = receiver["sns_configs"]
    assert sns["topic_arn"] == topic.state["arn"] == run.outputs["alert_topic_arn"]
    assert sns["sigv4"] == {"region": run.outputs["region"]}
    assert topic.inputs["kmsMasterKeyId"] == run.one("aws:kms/key:Key", "telemetry").state["arn"]


def test_only_amp_from_our_workspace_may_publish_to_the_topic(stack):
    _, run = stack
    policy = run.one("aws:sns/topicPolicy:TopicPolicy")
    [st] = json.loads(policy.inputs["policy"])["Statement"]
    assert st["Principal"] == {"Service": "aps.amazonaws.com"}
    assert st["Condition"]["ArnEquals"] == {"aws:SourceArn": run.one(WORKSPACE).state["arn"]}
    assert st["Resource"] == policy.inputs["arn"] == run.outputs["alert_topic_arn"]


def test_amp_logs_to_a_log_group_with_configured_retention(stack):
    name, run = stack
    log_group = run.one("aws:cloudwatch/logGroup:LogGroup")
    assert log_group.inputs["retentionInDays"] == config_value(name, "logRetentionDays")
    logging = run.one(WORKSPACE).inputs["loggingConfiguration"]
    assert logging["logGroupArn"] == log_group.state["arn"] + ":*"


def test_no_managed_grafana(stack):
    # Dropped: it would be an empty, per-user-billed workspace (see Telemetry's docstring).
    _, run = stack
    assert run.of_type("aws:grafana/workspace:Workspace") == [] and "grafana_endpoint" not in run.outputs


def test_outputs_are_published_to_ssm_for_ci(stack):
    name, run = stack
    parameter = run.one("aws:ssm/parameter:Parameter")
    assert parameter.inputs["name"] == f"/edgecv/{name}/cloud-outputs" == run.outputs["outputs_parameter"]
    published = json.loads(parameter.inputs["value"])
    assert published == {k: v for k, v in run.outputs.items() if k != "outputs_parameter"}
