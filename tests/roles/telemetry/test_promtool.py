"""The fleet's alert and recording rules: `promtool check rules`, `promtool test rules` (Debian's prometheus
package), every alert tested firing and quiet, and only metric names the app exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.promql import PROMETHEUS_OWN, RULES_DIR, app_metric_names, metric_names, recorded_names, rules

HERE = Path(__file__).resolve().parent
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted(HERE.glob("*.test.yml"))


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(path).exists():
        pytest.fail("promtool is missing: install Debian's prometheus package (make setup)")
    return path


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_rule_files_pass_promtool_check(promtool):
    assert RULE_FILES
    r = run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert r.returncode == 0, r.stdout + r.stderr


def test_rule_unit_tests_pass(promtool):
    assert TEST_FILES
    r = run(promtool, "test", "rules", *map(str, TEST_FILES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_a_wrong_threshold_fails_the_unit_tests(promtool, tmp_path):
    # The unit tests have teeth: loosen the disk alert and they must fail.
    rules_dir = tmp_path / "roles" / "telemetry" / "files" / "rules"
    rules_dir.mkdir(parents=True)
    for f in RULE_FILES:
        (rules_dir / f.name).write_text(f.read_text().replace("edgecv_device_disk_used_ratio > 0.9",
                                                              "edgecv_device_disk_used_ratio > 0.99"))
    tests_dir = tmp_path / "tests" / "promtool"
    tests_dir.mkdir(parents=True)
    for f in TEST_FILES:
        shutil.copy(f, tests_dir / f.name)
    r = run(promtool, "test", "rules", *(str(tests_dir / f.name) for f in TEST_FILES))
    assert r.returncode != 0 and "EdgecvDiskNearlyFull" in r.stdout + r.stderr


def _cases() -> dict[str, dict[str, bool]]:
    """alertname -> {"firing": bool, "quiet": bool} over all the unit tests.

    Quiet: an evaluation expecting no alert, or one whose input has more series than alerts it expects."""
    seen: dict[str, dict[str, bool]] = {}
    for f in TEST_FILES:
        for test in yaml.safe_load(f.read_text())["tests"]:
            n_series = len(test.get("input_series", []))
            for case in test.get("alert_rule_test", []):
                s = seen.setdefault(case["alertname"], {"firing": False, "quiet": False})
                expected = case.get("exp_alerts") or []
                s["firing"] |= bool(expected)
                s["quiet"] |= not expected or n_series > len(expected)
    return seen


def test_every_alert_has_a_firing_and_a_quiet_case():
    alerts = {r["alert"] for r in rules() if "alert" in r}
    cases = _cases()
    assert sorted(alerts - set(cases)) == [], "alerts without unit tests"
    assert {a: c for a, c in cases.items() if not (c["firing"] and c["quiet"])} == {}


def test_the_issue_s_alerts_are_all_there():
    alerts = {r["alert"] for r in rules() if "alert" in r}
    assert {
        "EdgecvThermalThrottling", "EdgecvMemoryGrowth", "EdgecvFpsBelowTarget", "EdgecvQueueGrowing",
        "EdgecvInferenceOverBudget", "EdgecvCameraDown", "EdgecvTritonDown", "EdgecvDiskNearlyFull",
        "EdgecvEvidenceRefused", "EdgecvDriftAlarm", "EdgecvDeviceOffline",
        # issue 21: alerts that reach a person about what the device cannot tell itself
        "EdgecvUpstreamLoss", "EdgecvHealthStale", "EdgecvAlertsDropped", "EdgecvMqttDisconnected",
        "EdgecvPredictionsCollapsed", "EdgecvUplinkBandwidthHigh",
    } <= alerts


_RANGE = re.compile(r"([a-zA-Z_:][\w:]*)\s*(?:\{[^}]*\})?\s*\[(\d+)([smhd])(?::[^\]]*)?\]")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def test_no_rule_reads_long_ranges_of_raw_series():
    # Every rule runs every minute over every device: a day of raw samples per target per evaluation is
    # billions of samples at 10,000 devices. Raw series: at most 30 minutes; recorded ones: at most an hour.
    recorded = recorded_names()
    too_long = {}
    for r in rules():
        for name, n, unit in _RANGE.findall(r["expr"]):
            limit = 3600 if name in recorded else 1800
            if int(n) * _SECONDS[unit] > limit:
                too_long[r.get("alert") or r["record"]] = f"{name}[{n}{unit}]"
    assert too_long == {}


def test_upstream_loss_is_a_ratio_of_counter_rates():
    [rule] = [r for r in rules() if r.get("record") == "edgecv:upstream_loss:ratio10m"]
    assert "rate(edgecv_device_net_probes_lost_total" in rule["expr"]
    assert "rate(edgecv_device_net_probes_sent_total" in rule["expr"]


def test_rules_name_only_exported_metrics():
    known = app_metric_names() | recorded_names() | PROMETHEUS_OWN
    unknown = {r.get("alert") or r["record"]: metric_names(r["expr"]) - known for r in rules()}
    assert {k: v for k, v in unknown.items() if v} == {}


def test_every_alert_says_what_and_how_bad():
    for r in rules():
        if "alert" in r:
            assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
