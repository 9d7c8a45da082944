"""The device app with evidence, drift and review sampling wired in, against real parts on 127.0.0.1.

One in-process run of the app (AppRunner) on the session's Triton (NanoDet), a file camera looping
vtest.avi, mosquitto, moto's S3 server as the evidence store and the real review service (SQLite).
The manifest served is a copy of NanoDet's whose reference confidence histogram sits where NanoDet
never scores (below its 0.35 threshold), so the confidence PSI must alarm. Checks afterwards:
evidence packages (schema-valid event.json, a clip spanning the pre/post roll, uploaded under
<site>/<device>/), the drift event on MQTT, flagged frames stored by the review service.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import av
import boto3
import jsonschema
import paho.mqtt.client as mqtt
import pytest
import yaml
from moto.server import ThreadedMotoServer

from app.config import load_config
from app.evidence.packager import SCHEMA_PATH
from app.runner import AppRunner
from fleet.local.mosquitto import mosquitto
from fleet.local.procs import free_port
from fleet.local.rtsp import VTEST, sample_video
from fleet.repo import REPO_ROOT
from tests.app.conftest import DEVICE, SITE

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

BUCKET = "edgecv-evidence-test"
PRE, POST = 1.5, 1.5
RUN_S = 9.0
NANODET = REPO_ROOT / "models" / "nanodet-m" / "manifest.yaml"


def mismatched_manifest(tmp: Path) -> Path:
    """NanoDet's manifest (same ONNX: the app config's artifact_root points at the repository) with a reference
    histogram concentrated in [0, 0.2), where the decoder's 0.35 score threshold never lets a score through."""
    doc = yaml.safe_load(NANODET.read_text())
    doc["reference_confidence"] = {"edges": [round(0.1 * i, 1) for i in range(11)],
                                   "counts": [600, 390, 4, 2, 1, 1, 1, 1, 0, 0]}
    out = tmp / "models" / "nanodet-m" / "manifest.yaml"
    out.parent.mkdir(parents=True)
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


class Subscriber:
    def __init__(self, port: int, topic: str):
        self.messages: list[tuple[str, dict]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="evidence-drift-test")
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload)))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker():
    b = mosquitto()
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def s3(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client, f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def app_config(tmp: Path, manifest: Path, grpc_url: str, broker_port: int, s3_url: str, review_url: str) -> Path:
    cfg = {
        "site_id": SITE, "device_id": DEVICE, "manifest": str(manifest), "artifact_root": str(REPO_ROOT),
        "triton": {"url": grpc_url, "request_timeout_s": 3},
        "batching": {"max_batch": 2, "max_delay_ms": 20},
        "cameras": [{
            "id": "yard", "url": str(VTEST if VTEST.is_file() else sample_video()), "fps": 8,
            "zones": [{"name": "all", "polygon": [[0, 0], [768, 0], [768, 576], [0, 576]]}],
            "lines": [{"name": "mid", "points": [[384, 0], [384, 576]]}],
            "rules": [{"name": "person-in-yard", "kind": "zone_intrusion", "zone": "all", "classes": ["person"],
                       "min_score": 0.4, "cooldown_s": 600},
                      {"name": "crossing", "kind": "line_crossing", "line": "mid", "classes": ["person"]}],
        }],
        "tracker": {"min_hits": 2, "max_age_s": 1.5},
        "mqtt": {"host": "127.0.0.1", "port": broker_port},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "spool_dir": str(tmp / "spool"),
        "evidence": {"dir": str(tmp / "evidence"), "pre_roll_s": PRE, "post_roll_s": POST, "jpeg_quality": 60,
                     "store": {"bucket": BUCKET, "endpoint_url": s3_url, "upload_interval_s": 0.5,
                               "shutdown_upload_s": 30}},
        "drift": {"window": 200, "min_samples": 50, "check_interval_s": 0.5},
        "sampling": {"low_confidence": [0.3, 0.6], "low_confidence_rate": 1.0, "drift_rate": 1.0,
                     "random_rate": 0.0, "max_per_minute": 120, "burst": 5},
        "review": {"url": review_url, "token_env": "EDGECV_TEST_REVIEW_TOKEN", "timeout_s": 3,
                   "correction_poll_s": 1.0},
    }
    path = tmp / "app.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_evidence_drift_and_review_flow_from_the_running_app(tmp_path, triton_server, broker, s3, review_service):
    s3_client, s3_url = s3
    review_url, review_db = review_service
    sub = Subscriber(broker.port, f"edgecv/{SITE}/{DEVICE}/#")
    try:
        resolved = load_config(app_config(tmp_path, mismatched_manifest(tmp_path), triton_server.grpc_url,
                                          broker.port, s3_url, review_url))
        runner = AppRunner(resolved).start(ready_timeout_s=60)
        processed: list[float] = []  # capture times of the frames handed to the evidence feed
        feed_add = runner.pipeline.evidence.add
        runner.pipeline.evidence.add = lambda frame, dets: (processed.append(frame.captured_at), feed_add(frame, dets))
        started = time.time()
        runner.run(RUN_S)
        stopped = time.time()
        summary = runner.summary()
        time.sleep(0.5)  # the broker's deliveries to our subscriber
    finally:
        sub.close()

    # Drift: the reference is where NanoDet never scores, so PSI alarms and the alarm reaches MQTT.
    drift = [p for topic, p in sub.messages if topic == f"edgecv/{SITE}/{DEVICE}/drift"]
    assert any(p["kind"] == "psi" for p in drift), (summary, [t for t, _ in sub.messages][:20])
    psi_event = next(p for p in drift if p["kind"] == "psi")
    assert psi_event["value"] > psi_event["threshold"] > 0  # the critical value for the window, not 0.2
    assert psi_event["model"] == "nanodet-m@1.0.0" and psi_event["site"] == SITE and psi_event["device"] == DEVICE
    assert summary["drift"]["psi"] > 1.0 and summary["drift"]["mean_confidence"] >= 0.35

    # Evidence: every event the app accepted was packaged; full-roll ones span pre- and post-roll.
    events = [p for topic, p in sub.messages if topic.endswith("/events")]
    assert events and summary["evidence"]["events"] == len(events) == summary["events"]
    packages = sorted(p for p in (tmp_path / "evidence").iterdir() if not p.name.startswith("."))
    assert {p.name for p in packages} == {e["event_id"] for e in events}
    schema = json.loads(SCHEMA_PATH.read_text())
    full = 0
    for pkg in packages:
        doc = json.loads((pkg / "event.json").read_text())
        jsonschema.validate(doc, schema)
        assert doc["site"] == SITE and doc["device"] == DEVICE and (pkg / "thumbnail.jpg").stat().st_size > 0
        t, clip = doc["event_time"], doc["clip"]
        if t - PRE >= started + 1.0 and t + POST <= stopped - 0.5:  # neither cut by the start nor by the stop
            full += 1
            # The clip holds every frame the camera delivered within [t - PRE, t + POST]: the processed ones
            # (with their detections) and those a newer frame replaced before inference.
            times = [f["time"] for f in doc["frames"]]
            assert [f["time"] for f in doc["frames"] if f["inferred"]] == [
                x for x in processed if t - PRE <= x <= t + POST]
            seqs = [f["seq"] for f in doc["frames"]]
            assert seqs == list(range(seqs[0], seqs[-1] + 1)) and times == sorted(times)
            assert clip["start_time"] == times[0] and clip["end_time"] == times[-1]
            assert clip["end_time"] - clip["start_time"] >= PRE + POST - 1.0
            with av.open(str(pkg / "clip.mp4")) as c:
                stream = c.streams.video[0]
                assert stream.codec_context.name == "h264"
                decoded = sum(1 for _ in c.decode(stream))
            assert decoded == clip["frames"] == len(times) >= (PRE + POST) * 2
    assert full >= 1, [json.loads((p / "event.json").read_text())["event_time"] - started for p in packages]

    # Uploaded under <site>/<device>/ (the uploader's last pass runs at shutdown).
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    for pkg in packages:
        assert {f"{SITE}/{DEVICE}/{pkg.name}/{n}" for n in ("clip.mp4", "event.json", "thumbnail.jpg")} <= keys
    assert all(k.startswith(f"{SITE}/{DEVICE}/") for k in keys)

    # Review: flagged frames were stored by the real service (drift raises the sampling reason to "drift").
    from sqlalchemy import select

    from fleet.review.models import Item

    with review_db.read() as s:
        items = s.scalars(select(Item)).all()
    assert summary["review_sent"] == len(items) > 0 and summary["review_dropped"] == 0
    assert {i.reason for i in items} <= {"low_confidence", "drift"} and "drift" in {i.reason for i in items}
    assert all(i.site == SITE and i.device == DEVICE and i.model == "nanodet-m@1.0.0" for i in items)
    assert all(i.width == 768 and i.height == 576 and i.predictions for i in items)
    assert runner.pipeline.review.since is not None  # the correction rate was pulled back
