"""Metric names: the ones the app exports, our recording rules, and those a PromQL expression mentions."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client import CollectorRegistry

from app.health import exporter as health
from app.metrics import Metrics
from fleet.repo import REPO_ROOT

RULES_DIR = REPO_ROOT / "roles" / "telemetry" / "files" / "rules"
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE"}
_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
          "inf", "nan", "atan2"}
_SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}


def app_metric_names() -> set[str]:
    """Sample names of app.metrics.Metrics and app.health.exporter (counters end in _total, histograms in _bucket...)."""
    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        names |= {family.name + s for s in _SUFFIXES.get(family.type, [""])}
    return names | health.exported_names()


def rules() -> list[dict]:
    return [r for path in sorted(RULES_DIR.glob("*.yml")) for g in yaml.safe_load(path.read_text())["groups"]
            for r in g["rules"]]


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside strings, label braces, ranges and the
    label lists of by/without/on/ignoring/group_*, and not followed by '(' (functions)."""
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(\s*\()?", e):
        word, is_call = m.group(1), m.group(2)
        if not is_call and word.lower() not in _WORDS:
            names.add(word)
    return names


DASHBOARDS = REPO_ROOT / "roles" / "telemetry" / "files" / "dashboards"
# Grafana's built-in variables, as a Prometheus would see them after Grafana expands them.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def expand(expr: str) -> str:
    """Grafana variables -> something Prometheus accepts: built-ins get durations, ours match anything."""
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return GRAFANA_BUILTINS.get(name, ".*")
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def queries(board: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable (label_values(SELECTOR, label))."""
    out = [(f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"])
           for p in board["panels"] for t in p.get("targets", [])]
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"])
            assert m, f"variable {v['name']}: only label_values(SELECTOR, LABEL) is used here"
            out.append((f"variable {v['name']}", m.group(1)))
    return out
