"""Evidence packages: the clip spans pre- and post-roll, is H.264, and event.json matches its schema."""

from __future__ import annotations

import json
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

import av
import cv2
import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

from app.evidence.feed import EvidenceFeeder
from app.evidence.packager import SCHEMA_PATH, EvidenceConfig, EvidencePackager, FrameRing
from app.metrics import Metrics
from app.pipeline.capture import CameraReader
from app.pipeline.types import Detections, Event, Frame
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


# --- clips an analyst can trust (issue 22) ----------------------------------------------------------------


def top_level_atoms(path: Path) -> list[str]:
    data, out, i = path.read_bytes(), [], 0
    while i + 8 <= len(data):
        size, kind = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[i + 8:i + 16], "big")
        out.append(kind)
        i += size if size else len(data)
    return out


def ffprobe_pts(path: Path) -> list[float]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "frame=pts_time",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    return [float(line.split(",")[0]) for line in out.split() if line.strip(",")]


def test_clip_is_faststart_and_each_frame_plays_at_its_capture_time(packager: EvidencePackager):
    """A 7.5 fps camera with jitter: the old clip was 7 fps constant, 9.87 s played as 10.71 s."""
    rng = np.random.default_rng(0)
    times = 1000.0 + np.cumsum(rng.uniform(0.9, 1.1, 120) / 7.5)
    for i, t in enumerate(times[:60]):
        packager.add_frame("cam-1", float(t), i, frame(i), dets(i))
    assert packager.on_event(event(float(times[50]), "evt-vfr"))  # frame_seq 50
    for i, t in enumerate(times[60:], start=60):
        packager.add_frame("cam-1", float(t), i, frame(i), dets(i))
    [package] = packager.flush_all()
    clip = package / "clip.mp4"
    atoms = top_level_atoms(clip)
    assert atoms.index("moov") < atoms.index("mdat"), atoms
    doc = json.loads((package / "event.json").read_text())
    start = doc["clip"]["start_time"]
    pts = ffprobe_pts(clip)
    assert pts == pytest.approx([f["time"] - start for f in doc["frames"]], abs=1e-4)
    [event_index] = [f["index"] for f in doc["frames"] if f["seq"] == 50]
    assert doc["clip"]["event_offset_s"] == pytest.approx(times[50] - start, abs=1e-6)
    assert pts[event_index] == pytest.approx(doc["clip"]["event_offset_s"], abs=1e-4)
    assert doc["clip"]["fps"] == pytest.approx(7.5, rel=0.05) and doc["clip"]["variable_frame_rate"]


def test_clip_holds_the_frames_replaced_before_inference(tmp_path: Path):
    """Frames a newer one replaced before inference reach the feeder first (from the camera thread) and the
    inferred ones later: the clip has every frame, in capture order, and only inferred ones carry boxes."""
    packager = EvidencePackager(EvidenceConfig(dir=tmp_path, pre_roll_s=2, post_roll_s=2), CLASSES)
    feeder = EvidenceFeeder(packager)
    feeder.start()
    t0 = 1000.0

    def f(i: int) -> Frame:
        return Frame("cam-1", i, t0 + i / FPS, frame(i))

    inferred = set(range(0, 60, 3))  # two of every three frames were replaced before inference
    for i in range(60):
        if i not in inferred:
            feeder.add_seen(f(i))
        elif i >= 3:  # an inferred frame arrives after the replaced ones captured while it was in inference
            feeder.add(f(i - 3), dets(i - 3))
        if i == 33:
            feeder.on_event(Event("evt-all", t0 + 30 / FPS, "s", "d", "cam-1", "door", "zone_intrusion", "person",
                                  0.9, (0, 0, 1, 1), 7, "tiny@1.0.0", frame_seq=30))
    feeder.add(f(57), dets(57))
    [package] = feeder.close()
    doc = json.loads((package / "event.json").read_text())
    seqs = [fr["seq"] for fr in doc["frames"]]
    assert seqs == list(range(10, 51)), "every frame from pre-roll to post-roll, in capture order"
    assert [fr["seq"] for fr in doc["frames"] if fr["inferred"]] == [s for s in seqs if s in inferred]
    assert all(fr["detections"] == [] for fr in doc["frames"] if not fr["inferred"])
    with av.open(str(package / "clip.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(seqs)


def test_the_camera_hands_replaced_frames_to_evidence():
    seen: list[int] = []
    reader = CameraReader("cam-1", "unused.mp4", is_stream=False, on_stale=lambda fr: seen.append(fr.seq))
    for _ in range(3):
        reader._deliver(frame(0), 0.0)  # nobody takes: each new frame replaces the last
    assert seen == [0, 1] and reader.take().seq == 2


def test_event_json_has_utc_times_and_the_rules_facts(packager: EvidencePackager):
    feed(packager, 0, 60)
    e = Event("evt-line", 1005.0, "site-a", "dev-1", "cam-1", "gate", "line_crossing", "person", 0.9,
              (10.0, 105.0, 40.0, 135.0), 7, "tiny@1.0.0", frame_seq=50,
              extra={"line": "gate-line", "direction": "b_to_a"})
    packager.on_event(e)
    feed(packager, 60, 120)
    [package] = packager.flush_all()
    doc = json.loads((package / "event.json").read_text())
    jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))
    assert doc["event_time"] == 1005.0 and doc["event_time_utc"] == "1970-01-01T00:16:45.000Z"
    assert doc["frame_seq"] == 50 and (doc["line"], doc["direction"]) == ("gate-line", "b_to_a")
    assert "zone" not in doc and "dwell_s" not in doc
    assert doc["clip"]["start_time_utc"] == "1970-01-01T00:16:40.000Z"
    assert doc["frames"][0]["time_utc"] == "1970-01-01T00:16:40.000Z"
    assert doc["created_at"].endswith("Z")
    dwell = packager._document(replace(e, extra={"zone": "door", "dwell_s": 4.0}), [], {}, [])
    assert (dwell["zone"], dwell["dwell_s"]) == ("door", 4.0)


def test_demo_keeps_evidence_when_asked(packager: EvidencePackager, tmp_path: Path):
    from rich.console import Console

    from fleet.demo import keep_evidence

    feed(packager, 0, 60)
    packager.on_event(event(1003.0))
    feed(packager, 60, 90)
    [package] = packager.flush_all()
    console = Console(record=True, width=200)
    keep_evidence(console, package.parent, None)
    assert "--keep DIR" in console.export_text()
    keep_evidence(console, package.parent, tmp_path / "kept")
    assert (tmp_path / "kept" / "evt-1" / "clip.mp4").is_file()
    assert str((tmp_path / "kept").resolve()) in console.export_text().replace("\n", "")
