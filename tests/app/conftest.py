"""Fixtures shared by the device app's tests: a small valid site folder and a real review service."""

from __future__ import annotations

import hashlib
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fleet.local.procs import free_port

SITE, DEVICE = "site-e", "dev-e"

# `make test-py310` runs these tests under CPython 3.10 with the device runtime only: tests that start the
# control plane's review service (Python 3.11, FastAPI) run in the main suite.
# (The moto modules are integration tests, which that run leaves out; their imports would fail collection.)
# GStreamer's python3-gi comes from the distribution, built for its own Python (Debian's 3.11 here; 3.10 on
# JetPack 6), so the GStreamer capture tests run with the system Python only.
if sys.version_info < (3, 11):
    collect_ignore = [
        "test_review_client.py",
        "test_runner_evidence_drift.py",
        "evidence/test_store.py",
        "pipeline/test_capture_gst.py",
        "alerts/test_publisher_tls.py",  # a real TLS mosquitto and a throwaway CA (`cryptography`): the main suite
        "faults",  # real servers (moto's S3, mosquitto) killed and frozen under the app: the main suite
    ]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory with a small valid manifest (artifact in a bucket: not checked locally) and a video file."""
    models = tmp_path / "models" / "tiny"
    models.mkdir(parents=True)
    (tmp_path / "clip.avi").write_bytes(b"\0")
    (models / "manifest.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: tiny
            version: 1.2.0
            classes: [person, car]
            input: {{name: data, shape: [3, 64, 64]}}
            outputs: [{{name: boxes, shape: [10, 4]}}, {{name: scores, shape: [10]}}, {{name: classes, shape: [10]}}]
            decoder:
              name: boxes_scores_classes
              params: {{boxes_output: boxes, scores_output: scores, classes_output: classes}}
            artifact:
              uri: s3://models/tiny/1.2.0/tiny.onnx
              sha256: {hashlib.sha256(b"tiny").hexdigest()}
              size: 4
              format: onnx
            triton: {{max_batch_size: 4, dynamic_batching: {{max_queue_delay_us: 5000}}}}
            provenance: {{source: test, licence: MIT, conversion: none}}
            """
        )
    )
    return tmp_path


def write(site: Path, body: str) -> Path:
    path = site / "app.yaml"
    path.write_text(textwrap.dedent(body))
    return path


GOOD = """\
site_id: site-a
device_id: jetson-01
manifest: models/tiny/manifest.yaml
cameras:
  - id: gate
    url: rtsp://10.0.0.21:554/stream1
    fps: 10
    zones:
      - {name: dock, polygon: [[0, 0], [100, 0], [100, 100]]}
    lines:
      - {name: door, points: [[0, 50], [100, 50]]}
    rules:
      - {name: dock-person, kind: zone_intrusion, zone: dock, classes: [person]}
      - {name: door-in, kind: line_crossing, line: door, direction: a_to_b}
  - id: lobby
    url: clip.avi
mqtt: {host: 127.0.0.1, port: 1884}
"""


@pytest.fixture
def review_service(tmp_path: Path, monkeypatch):
    """The real review service (FastAPI app under uvicorn) with a device token for DEVICE in the env."""
    if sys.version_info < (3, 11):
        pytest.skip("the review service is the control plane (Python 3.11); the main suite runs this test")
    import uvicorn

    from fleet.review.auth import add_device_token
    from fleet.review.db import Database
    from fleet.review.settings import ReviewSettings
    from fleet.review.web import create_app

    settings = ReviewSettings(db_url=ReviewSettings.sqlite_url(tmp_path / "review"), data_dir=tmp_path / "review")
    settings.data_dir.mkdir(parents=True)
    db = Database(settings.db_url)
    app = create_app(settings, db)
    with db.write() as s:
        monkeypatch.setenv("EDGECV_TEST_REVIEW_TOKEN", add_device_token(s, DEVICE, time.time()))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", db
    finally:
        server.should_exit = True
        thread.join(10)
        db.dispose()
