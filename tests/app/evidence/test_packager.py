"""Evidence packages: the clip spans pre- and post-roll, is H.264, and event.json matches its schema."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import av
import cv2
import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

from app.evidence.packager import SCHEMA_PATH, EvidenceConfig, EvidencePackager, FrameRing
from app.metrics import Metrics
from app.pipeline.types import Detections, Event
from fleet.cli import main

CLASSES = ["person", "car"]
FPS = 10


def frame(i: int) -> np.ndarray:
    img = np.full((240, 320, 3), 40, np.uint8)
    cv2.circle(img, (20 + 2 * i % 280, 120), 15, (0, 255, 0), -1)
    cv2.putText(img, str(i), (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
    return img


def dets(i: int) -> Detections:
    x = 20 + 2 * i % 280
    return Detections(np.array([[x - 15, 105, x + 15, 135]], np.float32), np.array([0.9], np.float32),
                      np.array([0], np.int32), np.array([7], np.int64))


def event(t: float, event_id: str = "evt-1", track: int = 7) -> Event:
    return Event(event_id, t, "site-a", "dev-1", "cam-1", "door-zone", "zone_intrusion", "person", 0.9,
                 (10.0, 105.0, 40.0, 135.0), track, "tiny@1.0.0", frame_seq=50)


def feed(packager: EvidencePackager, start: int, stop: int, t0: float = 1000.0) -> None:
    for i in range(start, stop):
        packager.add_frame("cam-1", t0 + i / FPS, i, frame(i), dets(i))


@pytest.fixture
def packager(tmp_path: Path):
    p = EvidencePackager(EvidenceConfig(dir=tmp_path / "evidence", pre_roll_s=5, post_roll_s=5), CLASSES, Metrics())
    yield p
    p.close()


def test_clip_spans_pre_and_post_roll_and_is_h264(packager: EvidencePackager):
    feed(packager, 0, 100)  # 10 s of history before the event at frame 100
    assert packager.on_event(event(1000.0 + 100 / FPS))
    feed(packager, 100, 160)  # post-roll completes at frame 150
    [package] = packager.flush_all()
    doc = json.loads((package / "event.json").read_text())
    # 5 s before + 5 s after at 10 fps, inclusive of both ends.
    assert len(doc["frames"]) == 101
    assert doc["frames"][0]["seq"] == 50 and doc["frames"][-1]["seq"] == 150
    assert doc["clip"]["end_time"] - doc["clip"]["start_time"] == pytest.approx(10.0)
    with av.open(str(package / "clip.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        decoded = sum(1 for _ in container.decode(stream))
        assert decoded == 101
        assert float(stream.duration * stream.time_base) == pytest.approx(10.1, abs=0.15)
    thumb = cv2.imread(str(package / "thumbnail.jpg"))
    assert thumb is not None and thumb.shape == (240, 320, 3)


def test_event_json_validates_and_boxes_match_the_detections(packager: EvidencePackager):
    feed(packager, 0, 60)
    packager.on_event(event(1000.0 + 55 / FPS))
    feed(packager, 60, 120)
    [package] = packager.flush_all()
    doc = json.loads((package / "event.json").read_text())
    jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))
    for f in doc["frames"]:
        [d] = f["detections"]
        expected = dets(f["seq"])
        assert d["box"] == pytest.approx(expected.boxes[0].tolist(), abs=0.1)
        assert (d["class"], d["track_id"]) == ("person", 7)
    assert doc["model"] == "tiny@1.0.0" and doc["rule"] == {"name": "door-zone", "kind": "zone_intrusion"}


def test_related_events_of_the_same_track_and_camera(packager: EvidencePackager):
    feed(packager, 0, 30)
    packager.on_event(event(1002.0, "evt-a", track=7))
    packager.on_event(event(1002.5, "evt-b", track=9))
    feed(packager, 30, 90)
    packager.on_event(event(1008.0, "evt-c", track=7))
    feed(packager, 90, 140)
    packages = {p.name: json.loads((p / "event.json").read_text()) for p in packager.flush_all()}
    related = {r["event_id"]: r["relation"] for r in packages["evt-c"]["context"]["related_events"]}
    assert related == {"evt-a": "same_track", "evt-b": "same_camera"}


def test_refused_when_retention_says_no_room(tmp_path: Path):
    metrics = Metrics()
    p = EvidencePackager(EvidenceConfig(dir=tmp_path), CLASSES, metrics, admit=lambda: False)
    feed(p, 0, 10)
    assert not p.on_event(event(1000.5))
    assert metrics.evidence_refused.labels("budget")._value.get() == 1
    assert p.flush_all() == []
    p.close()


def test_ring_is_capped_in_bytes_and_age():
    ring = FrameRing(max_bytes=200_000, max_age_s=3.0)
    for i in range(200):
        ring.add(i / FPS, i, frame(i))
    assert ring.bytes <= 200_000
    assert ring.frames[-1].time - ring.frames[0].time <= 3.0
    assert ring.bytes == sum(len(f.jpeg) for f in ring.frames)


def test_export_bundles_one_event(packager: EvidencePackager, tmp_path: Path):
    feed(packager, 0, 60)
    packager.on_event(event(1003.0))
    feed(packager, 60, 90)
    [package] = packager.flush_all()
    out = tmp_path / "bundle.zip"
    result = CliRunner().invoke(main, ["evidence", "export", "evt-1", "--dir", str(package.parent), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == ["evt-1/clip.mp4", "evt-1/event.json", "evt-1/thumbnail.jpg"]
    missing = CliRunner().invoke(main, ["evidence", "export", "nope", "--dir", str(package.parent)])
    assert missing.exit_code == 1 and "not found" in missing.output
