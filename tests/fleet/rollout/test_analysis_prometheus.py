"""The analysis queries run for real: Debian's Prometheus scrapes one small exporter per simulated device
(the app's own metrics, app/metrics.py), each target labelled with its `device` uuid."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime

import pytest
import yaml
from prometheus_client import start_http_server

from app.metrics import Metrics
from fleet.local.procs import free_port
from fleet.local.prometheus import prometheus, wait_for
from fleet.repo import REPO_ROOT
from fleet.rollout.analysis import AnalysisRequest, Analyzer, Prometheus
from fleet.spec.fleetspec import Analysis
from fleet.spec.manifest import parse_manifest
from tests.fleet.rollout.conftest import make_world

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# device -> inference latency it reports (None: it serves no inference at all)
DEVICES = {"a" * 32: 0.040, "b" * 32: 0.180, "c" * 32: 0.041, "d" * 32: 0.039, "e" * 32: None}


class SimulatedDevice:
    def __init__(self, uuid: str, latency: float | None):
        self.uuid, self.latency = uuid, latency
        self.metrics = Metrics()
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.metrics.registry)
        self.metrics.restarts.inc()

    def tick(self) -> None:
        if self.latency is None:
            return
        m = self.metrics
        for _ in range(20):
            m.observe_stage("inference", self.latency)
        m.camera_fps.labels("cam1").set(15.0)
        m.mean_confidence.set(0.62)
        m.drift.labels("psi").set(0.05)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fleet_metrics():
    devices = [SimulatedDevice(u, lat) for u, lat in DEVICES.items()]
    stop = threading.Event()

    def feed() -> None:
        while not stop.is_set():
            for d in devices:
                d.tick()
            stop.wait(0.1)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    config = {
        "global": {"scrape_interval": "500ms", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "edgecv",
            # The `device` label tells devices apart; in production the scrape or remote-write adds it.
            "static_configs": [{"targets": [f"127.0.0.1:{d.port}"], "labels": {"device": d.uuid}} for d in devices],
        }],
    }
    svc = prometheus(config)
    try:
        svc.start()
        wait_for(svc.url, 'count(up{job="edgecv"} == 1) == 5', timeout=30)
        # rate() over the window needs a few scrapes of every device
        wait_for(svc.url, 'count(count_over_time(up{job="edgecv"}[20s]) >= 12) == 5', timeout=30)
        yield svc.url
    finally:
        stop.set()
        feeder.join(5)
        svc.stop()
        for d in devices:
            d.stop()
        shutil.rmtree(svc.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def analyzer(fleet_metrics: str) -> Analyzer:
    data = yaml.safe_load((REPO_ROOT / "models/nanodet-m/manifest.yaml").read_text())
    data["latency_budget_ms"] = {"inference": 100.0}
    manifest = parse_manifest(data)
    return Analyzer(Prometheus(fleet_metrics), Analysis(window="20s", min_samples=100), [manifest])


BASELINE = ("c" * 32, "d" * 32)


def test_a_healthy_canary_passes(analyzer: Analyzer):
    result = analyzer.run(AnalysisRequest("canary", ("a" * 32,), BASELINE), datetime.now(UTC))
    by_name = {c.name: c for c in result.checks}
    assert result.verdict == "pass", result.summary()
    p95 = by_name["inference_p95_ms"]
    assert 33 < p95.value <= 50 and 33 < p95.baseline <= 50 and p95.samples >= 100
    assert by_name["fps"].value == pytest.approx(15.0) and by_name["availability"].value == pytest.approx(1.0)


def test_a_canary_over_the_latency_budget_fails(analyzer: Analyzer):
    result = analyzer.run(AnalysisRequest("canary", ("b" * 32,), BASELINE), datetime.now(UTC))
    p95 = {c.name: c for c in result.checks}["inference_p95_ms"]
    assert result.verdict == "fail" and p95.verdict == "fail", result.summary()
    assert p95.value > 150 and "> 100" in p95.detail and "(worse)" in p95.detail
    assert [c.name for c in result.failures()] == ["inference_p95_ms"]


def test_too_little_data_is_inconclusive_never_pass(analyzer: Analyzer):
    result = analyzer.run(AnalysisRequest("canary", ("e" * 32,), BASELINE), datetime.now(UTC))
    assert result.verdict == "inconclusive", result.summary()
    p95 = {c.name: c for c in result.checks}["inference_p95_ms"]
    assert p95.verdict == "inconclusive" and "samples < 100" in p95.detail


def test_prometheus_unreachable_is_inconclusive():
    dead = Analyzer(Prometheus(f"http://127.0.0.1:{free_port()}", timeout_s=2), Analysis(window="20s"), [])
    result = dead.run(AnalysisRequest("canary", ("a" * 32,), BASELINE), datetime.now(UTC))
    assert result.verdict == "inconclusive" and all("unreachable" in c.detail for c in result.checks)


def test_every_series_carries_its_device_label(fleet_metrics: str):
    from fleet.local.prometheus import query

    series = query(fleet_metrics, 'edgecv_stage_latency_seconds_count{stage="inference"}')
    assert sorted(s["metric"]["device"] for s in series) == sorted(u for u, lat in DEVICES.items() if lat)


@pytest.mark.parametrize("canary, outcome", [("a" * 32, "pilot"), ("b" * 32, "rolled_back")])
def test_the_controller_acts_on_the_real_analysis(api, analyzer: Analyzer, canary: str, outcome: str):
    others = [u for u in DEVICES if u != canary]
    world = make_world(api, canaries=1, uuids=[canary, *others],
                       canary={"tag": {"key": "edgecv.canary", "value": "true"}, "max_devices": 1, "soak": "0s"})
    c = world.controller(analyzer)
    c.reconcile()
    world.api.devices_apply_targets()
    result = c.reconcile()
    assert result.analysis is not None and result.analysis.devices == 1 and result.analysis.baseline_devices == 4
    state = world.state()
    if outcome == "pilot":
        assert state["status"] == "running" and state["stage"] == 1
    else:
        assert state["status"] == "rolled_back" and "inference_p95_ms" in state["reason"]
        assert world.pinned_to(world.new) == set()
