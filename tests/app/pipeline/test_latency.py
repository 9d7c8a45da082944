"""Latency percentiles (recorded samples and Prometheus histograms) and the /healthz, /readyz, /metrics endpoint."""

import json

import numpy as np
import pytest
import requests
from prometheus_client import generate_latest

from app.metrics import Metrics
from app.pipeline.latency import LatencyRecorder, from_prometheus_text, histogram_quantile, write_report
from app.server import StatusServer


def test_recorder_percentiles_in_ms_over_a_bounded_window(tmp_path):
    rec = LatencyRecorder(window=1000)
    for v in range(1, 2001):  # only the newest 1000 (1001..2000 ms) are kept
        rec.record("inference", v / 1000)
    rec.record("capture", 0.004)
    p = rec.percentiles()
    assert p["inference"] == {"p50_ms": pytest.approx(1500.5), "p95_ms": pytest.approx(1950.05)}
    assert p["capture"] == {"p50_ms": 4.0, "p95_ms": 4.0}
    assert "total" not in p  # no samples, no entry
    path = write_report(rec.report(), tmp_path / "out" / "latency.json")
    assert json.loads(path.read_text()) == {"stages": p}


def test_histogram_quantile_interpolates_like_promql():
    buckets = [(0.01, 10), (0.02, 30), (0.05, 40), (float("inf"), 40)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.015)  # rank 20: halfway through (0.01, 0.02]
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.02 + 0.03 * (38 - 30) / 10)
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.004)  # first bucket starts at 0
    assert histogram_quantile(0.5, [(0.01, 0), (float("inf"), 0)]) is None
    assert histogram_quantile(0.99, [(0.01, 1), (float("inf"), 10)]) == 0.01  # beyond the last finite bound


def test_report_from_the_apps_histograms_close_to_the_exact_percentiles():
    m = Metrics()
    rng = np.random.default_rng(1)
    samples = {"inference": rng.uniform(0.040, 0.060, 4000), "preprocess": rng.uniform(0.001, 0.002, 4000)}
    for stage, values in samples.items():
        for v in values:
            m.observe_stage(stage, float(v))
    m.frames.labels("cam").inc()  # other metrics on the page are ignored
    report = from_prometheus_text(generate_latest(m.registry).decode())
    assert list(report["stages"]) == ["preprocess", "inference"]  # pipeline order
    inf = report["stages"]["inference"]
    # Buckets around 50 ms are (0.033, 0.05] and (0.05, 0.075]: interpolation stays within a bucket width.
    assert inf["p50_ms"] == pytest.approx(np.percentile(samples["inference"], 50) * 1000, abs=5)
    assert 50 <= inf["p95_ms"] <= 75
    assert 1 <= report["stages"]["preprocess"]["p50_ms"] <= 2.5


def test_status_endpoint():
    m = Metrics()
    m.frames.labels("gate").inc(3)
    state = {"loop_alive": True, "triton_ready": False, "cameras": {"gate": True, "yard": False},
             "camera_errors": {"yard": "refused: connection refused by 10.0.0.9:554"}, "dead_threads": [],
             "disk_full": []}
    server = StatusServer(m.registry, lambda: state, host="127.0.0.1", port=0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert 'edgecv_frames_total{camera="gate"} 3.0' in requests.get(f"{base}/metrics", timeout=5).text
        r = requests.get(f"{base}/readyz", timeout=5)
        assert r.status_code == 503 and r.json()["reasons"] == ["triton model not ready"]
        h = requests.get(f"{base}/healthz", timeout=5)
        assert h.status_code == 200 and h.json() == {
            "status": "degraded", "triton_ready": False, "cameras_down": ["yard"],
            "camera_errors": {"yard": "refused: connection refused by 10.0.0.9:554"}, "disk_full": [],
            "dead_threads": [],
        }
        state.update(triton_ready=True, cameras={"gate": True, "yard": True}, disk_full=["spool"])
        h = requests.get(f"{base}/healthz", timeout=5)
        assert h.status_code == 200 and h.json()["status"] == "degraded" and h.json()["disk_full"] == ["spool"]
        state.update(disk_full=[], dead_threads=["evidence-uploader"])  # a restart would help: say so
        h = requests.get(f"{base}/healthz", timeout=5)
        assert h.status_code == 503 and h.json()["status"] == "dead_thread"
        state.update(dead_threads=[], triton_ready=False, cameras={"gate": True, "yard": False})
        state["triton_ready"] = True
        assert requests.get(f"{base}/readyz", timeout=5).json() == {"ready": True, "cameras_up": ["gate"], "reasons": []}
        state["cameras"] = {"gate": False, "yard": False}
        assert requests.get(f"{base}/readyz", timeout=5).json()["reasons"] == ["no camera up"]
        state["loop_alive"] = False
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 503
        assert requests.get(f"{base}/nope", timeout=5).status_code == 404
    finally:
        server.stop()
