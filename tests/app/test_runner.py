"""The device app end to end with real parts on 127.0.0.1, and its faults.

One stack for the module: Triton (pytriton's server, the rendered NanoDet repository, python backend), a
GStreamer RTSP camera looping vtest.avi, mosquitto, and `edgecv app run` as a subprocess with two cameras
(the RTSP one and the same video as a file). The tests run in order, each leaving the stack healthy:
events reach MQTT; the RTSP server dies and comes back (the camera reconnects, the file camera never
stalls); Triton dies and comes back (readyz 503 then 200, errors counted, frames flow again without an app
restart); SIGTERM drains and exits 0 with the latency report written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fleet.local.mosquitto import mosquitto
from fleet.local.procs import free_port
from fleet.local.rtsp import VTEST, rtsp_camera, sample_video
from fleet.local.triton import triton
from fleet.repo import REPO_ROOT
from fleet.spec.manifest import load_manifest
from fleet.triton.render import render

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

SITE, DEVICE = "site-t", "dev-t"
MANIFEST = REPO_ROOT / "models" / "nanodet-m" / "manifest.yaml"


class Events:
    """Every event payload published under edgecv/SITE/DEVICE/+/events (QoS 1)."""

    def __init__(self, port: int):
        self.payloads: list[dict] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pipeline-test")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"edgecv/{SITE}/{DEVICE}/+/events", qos=1)
        assert subscribed.wait(10)

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.payloads.append(json.loads(msg.payload))

    def by_camera(self) -> dict[str, list[dict]]:
        with self.lock:
            out: dict[str, list[dict]] = {}
            for p in self.payloads:
                out.setdefault(p["camera"], []).append(p)
            return out

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


class Stack:
    def __init__(self, work: Path, triton_server, camera, broker, events: Events, metrics_port: int):
        self.work, self.triton, self.camera, self.broker, self.events = work, triton_server, camera, broker, events
        self.metrics_port = metrics_port
        self.log = work / "app.log"
        self.report = work / "latency.json"
        self.config = work / "app.yaml"
        self.proc: subprocess.Popen | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def metric(self, name: str, **labels) -> float:
        """Sum of a metric's samples matching labels (0 when absent)."""
        text = requests.get(self.url("/metrics"), timeout=5).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def status(self, path: str) -> int:
        try:
            return requests.get(self.url(path), timeout=2).status_code
        except requests.RequestException:
            return -1

    def app_log(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def wait_until(cond, timeout: float, what: str, stack: Stack | None = None, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{stack.app_log()}" if stack else ""))


def app_config(work: Path, grpc_url: str, rtsp_url: str, video: Path, broker_port: int, metrics_port: int) -> dict:
    # Zones/lines in vtest.avi pixels (768x576): people walk left and right across the paved band.
    rules = {
        "zones": [{"name": "yard", "polygon": [[0, 0], [768, 0], [768, 576], [0, 576]]}],
        "lines": [{"name": "mid", "points": [[384, 60], [384, 520]]}],
        "rules": [
            {"name": "person-in-yard", "kind": "zone_intrusion", "zone": "yard", "classes": ["person"],
             "min_score": 0.4, "cooldown_s": 600},
            {"name": "crossing", "kind": "line_crossing", "line": "mid", "classes": ["person"]},
        ],
    }
    return {
        "site_id": SITE,
        "device_id": DEVICE,
        "manifest": str(MANIFEST),
        "triton": {"url": grpc_url, "protocol": "grpc", "shared_memory": "auto", "request_timeout_s": 3},
        "batching": {"max_batch": 4, "max_delay_ms": 40},
        "cameras": [
            {"id": "rtsp", "url": rtsp_url, "fps": 5, "open_timeout_ms": 2000, "read_timeout_ms": 2000, **rules},
            {"id": "file", "url": str(video), "fps": 5, **rules},
        ],
        "tracker": {"min_hits": 2, "max_age_s": 2.0},
        "mqtt": {"host": "127.0.0.1", "port": broker_port},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "spool_dir": str(work / "spool"),
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    manifest = load_manifest(MANIFEST)
    render(manifest, work / "repo", "python")
    video = VTEST if VTEST.is_file() else sample_video()
    with ExitStack() as es:
        tri = triton(work / "repo", [manifest.name])
        es.callback(tri.stop)
        tri.start()
        cam = rtsp_camera(video, fps=10, width=768, height=576)
        es.callback(cam.stop)
        cam.start()
        broker = mosquitto()
        es.callback(broker.stop)
        broker.start()
        events = Events(broker.port)
        es.callback(events.close)
        metrics_port = free_port()
        st = Stack(work, tri, cam, broker, events, metrics_port)
        cfg = app_config(work, tri.grpc_url, cam.url, video, broker.port, metrics_port)
        st.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        log = st.log.open("wb")
        st.proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.cli", "app", "run", "--config", str(st.config),
             "--latency-report", str(st.report)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

        def stop_app():
            if st.proc.poll() is None:
                st.proc.kill()
                st.proc.wait(10)

        es.callback(stop_app)
        wait_until(lambda: st.status("/readyz") == 200, 90, "the app to become ready", st)
        yield st


def test_events_flow_from_both_cameras_to_mqtt(stack):
    by_cam = wait_until(
        lambda: (c := stack.events.by_camera()) and {"rtsp", "file"} <= set(c) and c, 60, "events from both cameras",
        stack,
    )
    for payloads in by_cam.values():
        p = payloads[0]
        assert p["site"] == SITE and p["device"] == DEVICE and p["model"] == "nanodet-m@1.0.0"
        assert p["class"] == "person" and p["rule"] in ("person-in-yard", "crossing") and p["score"] >= 0.35
        x1, y1, x2, y2 = p["box"]
        assert 0 <= x1 < x2 <= 768 and 0 <= y1 < y2 <= 576 and p["track_id"] >= 0
    ids = [p["event_id"] for ps in by_cam.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert stack.metric("edgecv_alerts_published_total") >= 2
    assert stack.metric("edgecv_predictions_total", class_name="person") > 0
    assert stack.metric("edgecv_stage_latency_seconds_count", stage="total") > 0
    # Device health is exported beside the pipeline metrics (psutil here: no tegrastats).
    assert stack.metric("edgecv_device_memory_total_bytes") > 0
    assert stack.metric("edgecv_device_health_up", source="psutil") == 1
    health = requests.get(stack.url("/healthz"), timeout=2).json()
    assert health["status"] == "ok", health


def test_rtsp_server_restart_reconnects_and_other_camera_keeps_flowing(stack):
    wait_until(lambda: stack.metric("edgecv_camera_up", camera="rtsp") == 1, 20, "rtsp camera up", stack)
    reconnects = stack.metric("edgecv_camera_reconnects_total", camera="rtsp")
    stack.camera.kill()
    wait_until(lambda: stack.metric("edgecv_camera_up", camera="rtsp") == 0, 10, "rtsp camera seen down", stack)
    # While the RTSP camera is away the file camera keeps going through the pipeline: it never stalls.
    file_before = stack.metric("edgecv_frames_processed_total", camera="file")
    wait_until(lambda: stack.metric("edgecv_frames_processed_total", camera="file") >= file_before + 10, 20,
               "file camera frames while the rtsp camera is down", stack)
    assert stack.metric("edgecv_camera_up", camera="rtsp") == 0  # still away: the file camera went on alone
    assert stack.status("/readyz") == 200  # one camera up is enough to be ready
    assert requests.get(stack.url("/healthz"), timeout=2).json()["cameras_down"] == ["rtsp"]
    stack.camera.start()
    wait_until(lambda: stack.metric("edgecv_camera_up", camera="rtsp") == 1, 30, "rtsp camera back up", stack)
    assert stack.metric("edgecv_camera_reconnects_total", camera="rtsp") > reconnects
    rtsp_back = stack.metric("edgecv_frames_processed_total", camera="rtsp")
    wait_until(lambda: stack.metric("edgecv_frames_processed_total", camera="rtsp") > rtsp_back + 5, 20,
               "rtsp frames through the pipeline again", stack)


def test_triton_restart_recovers_without_an_app_restart(stack):
    starts = stack.metric("edgecv_app_starts_total")
    stack.triton.kill()
    wait_until(lambda: stack.status("/readyz") == 503, 15, "readyz 503 while Triton is down", stack)
    assert stack.metric("edgecv_triton_up") == 0
    assert requests.get(stack.url("/healthz"), timeout=2).json()["status"] == "degraded"
    time.sleep(1.0)
    lost = stack.metric("edgecv_frames_dropped_total", reason="triton_down") + stack.metric(
        "edgecv_frames_dropped_total", reason="inference_error"
    )
    assert lost > 0  # frames that came while Triton was away were dropped and counted
    stack.triton.start()
    wait_until(lambda: stack.status("/readyz") == 200, 60, "readyz 200 after Triton is back", stack)
    before = stack.metric("edgecv_frames_processed_total")
    wait_until(lambda: stack.metric("edgecv_frames_processed_total") > before + 10, 30, "frames flowing again", stack)
    assert stack.metric("edgecv_app_starts_total") == starts  # the same process recovered by itself
    assert stack.proc.poll() is None


def test_app_report_reads_the_running_apps_histograms(stack, tmp_path):
    from click.testing import CliRunner

    from app.cli import app_group

    out = tmp_path / "latency.json"
    result = CliRunner().invoke(app_group, ["report", "--metrics-url", stack.url("/metrics"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    stages = json.loads(out.read_text())["stages"]
    assert {"capture", "preprocess", "batch_wait", "inference", "postprocess", "dispatch", "total"} <= set(stages)
    # Interpolated inside the histogram's buckets: the batch wait sits under its 40 ms deadline bucket's top.
    assert 0 < stages["batch_wait"]["p50_ms"] <= 50 and stages["total"]["p95_ms"] >= stages["total"]["p50_ms"]
    bad = CliRunner().invoke(app_group, ["report", "--metrics-url", f"http://127.0.0.1:{free_port()}/metrics"])
    assert bad.exit_code == 1 and "cannot read" in bad.output


def test_sigterm_drains_and_writes_the_latency_report(stack):
    events_before = len(stack.events.payloads)
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(30) == 0, stack.app_log()
    report = json.loads(stack.report.read_text())
    stages = report["stages"]
    assert set(stages) == {"capture", "preprocess", "batch_wait", "inference", "postprocess", "dispatch", "total"}
    for name, s in stages.items():
        assert 0 <= s["p50_ms"] <= s["p95_ms"], (name, s)
    assert stages["total"]["p50_ms"] >= stages["inference"]["p50_ms"]
    summary = next(json.loads(line) for line in reversed(stack.log.read_text().splitlines())
                   if line.startswith('{"frames_processed"'))
    assert summary["frames_processed"] > 0 and summary["events"] >= events_before
    # Every event the app counted reached the broker before it exited (nothing left in the spool).
    time.sleep(0.5)
    ids = {p["event_id"] for p in stack.events.payloads}
    assert len(ids) == summary["events"], (len(ids), summary["events"])
