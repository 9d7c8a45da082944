"""Evidence packages written by the device app (app.evidence.packager) become review items with a playable clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from app.evidence.packager import EvidenceConfig, EvidencePackager
from app.pipeline.types import Detections, Event
from fleet.cli import main
from fleet.review.evidence import PackageError, item_from_package, post_item
from fleet.review.models import Item

FPS = 10


def frame(i: int) -> np.ndarray:
    img = np.full((240, 320, 3), 50, np.uint8)
    img[100:140, 20 + 3 * i:60 + 3 * i] = 230
    return img


def package(root: Path, event_id: str = "evt-42") -> Path:
    """A real package: the app's packager, 1 s of pre- and post-roll around the event."""
    packager = EvidencePackager(EvidenceConfig(dir=root, pre_roll_s=1, post_roll_s=1), ["person", "car"])
    try:
        for i in range(40):
            dets = Detections(np.array([[20 + 3 * i, 100, 60 + 3 * i, 140]], np.float32), np.array([0.47], np.float32),
                              np.array([1], np.int32), np.array([3], np.int64))
            packager.add_frame("cam-2", 1000 + i / FPS, i, frame(i), dets)
            if i == 20:
                packager.on_event(Event(event_id, 1000 + i / FPS, "site-b", "jetson-09", "cam-2", "dock", "zone_intrusion",
                                        "car", 0.47, (80.0, 100.0, 120.0, 140.0), 3, "detector@2.1.0", frame_seq=i))
        [pkg] = packager.flush_all()
    finally:
        packager.close()
    return pkg


@pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")
def test_a_package_becomes_an_item_with_its_clip(env):
    pkg = package(env.evidence)
    body = item_from_package(pkg, env.evidence)
    assert body["clip_path"] == "evt-42/clip.mp4" and body["captured_at"] == pytest.approx(1002.0)
    assert body["boxes"] == [{"box": [80.0, 100.0, 120.0, 140.0], "class": "car", "score": 0.47, "track_id": 3}]
    # jetson-09's package, relayed by the uploader: a token made --any-device (jetson-01's own is refused).
    with pytest.raises(PackageError, match="403.*belongs to device 'jetson-01'"):
        post_item(env.device, "http://testserver", env.token, body)
    assert post_item(env.device, "http://testserver", env.uploader_token, body)["created"] is True
    assert post_item(env.device, "http://testserver", env.uploader_token, body)["created"] is False
    with env.db.read() as s:
        it = s.get(Item, "evt-42")
    assert (it.reason, it.site, it.model, it.width, it.height) == ("alert", "site-b", "detector@2.1.0", 320, 240)
    alice = env.reviewer("alice")
    page = alice.get("/review/evt-42")
    assert '<video id="clip"' in page.text
    assert alice.get("/items/evt-42/clip").content == (pkg / "clip.mp4").read_bytes()


def test_broken_packages_are_refused_naming_file_and_field(tmp_path):
    pkg = package(tmp_path / "ev")
    doc = json.loads((pkg / "event.json").read_text())
    del doc["site"]
    (pkg / "event.json").write_text(json.dumps(doc))
    with pytest.raises(PackageError, match=r"event.json: \(top\): 'site' is a required property"):
        item_from_package(pkg)
    (pkg / "event.json").write_text("{")
    r = CliRunner().invoke(main, ["review", "ingest-evidence", str(pkg), "--url", "http://127.0.0.1:9", "--token", "x"])
    assert r.exit_code == 1 and "event.json:1: malformed JSON" in r.output
    with pytest.raises(PackageError, match="not inside the evidence root"):
        item_from_package(package(tmp_path / "other"), tmp_path / "ev")
