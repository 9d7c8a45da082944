"""Grafana JSON models: well-formed, every query parses on a real Prometheus, and every metric a query names
is one the app exports (app.metrics.Metrics, app.health.exporter), a recording rule of ours, or Prometheus's own."""

from __future__ import annotations

import re

import pytest

from fleet.local.prometheus import query, wait_for
from tests.support.promql import (
    DASHBOARDS,
    GRAFANA_BUILTINS,
    PROMETHEUS_OWN,
    app_metric_names,
    dashboards,
    expand,
    metric_names,
    queries,
    recorded_names,
)


def test_the_four_dashboards_are_there():
    assert set(dashboards()) == {"fleet-overview.json", "site.json", "device.json", "model.json"}


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS.glob("*.json")))
def test_dashboard_is_a_well_formed_grafana_model(name):
    board = dashboards()[name]
    assert board["uid"].startswith("edgecv-") and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    for p in board["panels"]:
        assert p["targets"], f"panel {p['title']!r} has no query"
        assert p["datasource"]["uid"] == "${datasource}"
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        for t in p["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", t["expr"])) - set(GRAFANA_BUILTINS)
            assert used <= variables, f"{name} panel {p['title']!r} uses undefined variables {used - variables}"


def test_dashboard_uids_are_unique():
    uids = [b["uid"] for b in dashboards().values()]
    assert len(uids) == len(set(uids))


def test_every_query_names_only_exported_metrics():
    known = app_metric_names() | recorded_names() | PROMETHEUS_OWN
    unknown = {
        (name, where, expr): metric_names(expand(expr)) - known
        for name, board in dashboards().items()
        for where, expr in queries(board)
    }
    assert {k: v for k, v in unknown.items() if v} == {}


def test_metric_name_extraction():
    # The checker itself: it must see through functions, label lists, strings and ranges.
    expr = ('sum by (site, le) (rate(edgecv_x_bucket{stage="a b",le=~"0.1"}[5m])) / on (site) group_left (v) '
            "edgecv_y * 0.95 > bool 1 unless absent(ALERTS)")
    assert metric_names(expr) == {"edgecv_x_bucket", "edgecv_y", "ALERTS"}
    assert metric_names("histogram_quantile(0.95, edgecv:stage_latency_seconds:p95)") == {
        "edgecv:stage_latency_seconds:p95"}


def test_a_typo_in_a_metric_name_would_be_caught():
    known = app_metric_names()
    assert "edgecv_camera_fps" in known and "edgecv_device_net_bytes_total" in known
    assert metric_names("rate(edgecv_camera_fsp[5m])") - known == {"edgecv_camera_fsp"}


@pytest.mark.integration
def test_every_query_parses_on_prometheus(stack):
    failures = []
    for name, board in dashboards().items():
        for where, expr in queries(board):
            try:
                query(stack.central_url, expand(expr))
            except ValueError as exc:
                failures.append(f"{name} {where}: {exc}")
    assert failures == []


@pytest.mark.integration
def test_queries_show_data_from_a_running_device(stack):
    # Beyond parsing: the device dashboard's core panels return series for the device the stack runs.
    board = dashboards()["device.json"]
    by_title = {p["title"]: p["targets"][0]["expr"] for p in board["panels"]}
    for title in ("Latency p95 per stage", "Camera fps and target", "CPU and GPU", "Memory", "Disk"):
        expr = by_title[title].replace("$site", "lab").replace("$device", "dev-1")
        assert wait_for(stack.central_url, expand(expr)), f"{title}: no data"


def test_heatmaps_ask_prometheus_for_heatmap_format():
    # Without format: heatmap Grafana draws cumulative buckets as series, not a distribution.
    for name, board in dashboards().items():
        for p in board["panels"]:
            if p["type"] == "heatmap":
                assert {t.get("format") for t in p["targets"]} == {"heatmap"}, f"{name} panel {p['title']!r}"


def test_every_model_panel_honours_the_model_variable():
    for p in dashboards()["model.json"]["panels"]:
        for t in p["targets"]:
            assert 'model="$model"' in t["expr"], f"panel {p['title']!r} shows every model: {t['expr']}"


def test_the_device_board_shows_clocks_and_both_kinds_of_throttling():
    exprs = " ".join(t["expr"] for p in dashboards()["device.json"]["panels"] for t in p["targets"])
    for name in ("edgecv_device_gpu_frequency_hertz", "edgecv_device_emc_frequency_hertz",
                 "edgecv_device_throttled", "edgecv_device_overcurrent_events_total"):
        assert name in exprs
