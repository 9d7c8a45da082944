"""The device's review client against the real review service (FastAPI under uvicorn, SQLite) on 127.0.0.1:
flagged frames are stored, re-sends are idempotent, a full queue / a refused token / an outage drop and count
(never block), and the correction rate is pulled back."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlalchemy import select

from app.metrics import Metrics
from app.pipeline.types import Detections
from app.review_client import ReviewClient, Sample
from fleet.local.procs import free_port
from fleet.review.models import Item
from fleet.review.queue import DONE
from tests.app.conftest import DEVICE, SITE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
CLASSES = ["person", "car"]


def sample(t: float, reason: str = "low_confidence") -> Sample:
    image = np.full((120, 160, 3), 90, np.uint8)
    dets = Detections(np.array([[10, 20, 60, 100], [150, 0, 170, 30]], np.float32), np.array([0.42, 0.8], np.float32),
                      np.array([0, 1], np.int32))
    return Sample(reason, "gate", t, image, dets)


def client(url: str, token: str, metrics: Metrics, **kw) -> ReviewClient:
    return ReviewClient(url, token, site_id=SITE, device_id=DEVICE, model_ref="tiny@1.0.0", class_names=CLASSES,
                        metrics=metrics, timeout_s=2, **kw)


def flagged(metrics: Metrics, name: str, reason: str) -> float:
    return metrics.registry.get_sample_value(name, {"reason": reason}) or 0.0


def test_samples_are_stored_once_with_their_boxes(review_service, monkeypatch):  # noqa: F811
    import os

    url, db = review_service
    metrics = Metrics()
    c = client(url, os.environ["EDGECV_TEST_REVIEW_TOKEN"], metrics)
    s = sample(1_800_000_000.25)
    assert c.send(s) and c.send(s)  # the second is a re-send of the same id: accepted, nothing new stored
    with db.read() as sess:
        items = sess.scalars(select(Item)).all()
    assert len(items) == 1
    item = items[0]
    assert (item.reason, item.site, item.device, item.camera, item.model) == ("low_confidence", SITE, DEVICE, "gate",
                                                                              "tiny@1.0.0")
    assert (item.width, item.height) == (160, 120) and item.captured_at == pytest.approx(1_800_000_000.25)
    boxes = [(p["class"], p["box"]) for p in item.predictions]
    assert boxes == [("person", [10, 20, 60, 100]), ("car", [150, 0, 160, 30])]  # clipped to the frame
    assert flagged(metrics, "edgecv_review_flagged_total", "low_confidence") == 2

    heard: list[tuple[int, int]] = []
    c.on_corrections = lambda reviewed, corrected: heard.append((reviewed, corrected))
    rate = c.poll_corrections()  # nothing reviewed yet: the window moves on, the drift monitor hears nothing
    assert rate["reviewed"] == 0 and c.since == rate["until"] and heard == []

    with db.write() as sess:  # a reviewer corrected the item (the state the review actions leave behind)
        row = sess.get(Item, item.id)
        row.status, row.decision, row.reviewed_at = DONE, "corrected", db.now()
    time.sleep(0.01)
    rate = c.poll_corrections()
    assert (rate["reviewed"], rate["corrected"]) == (1, 1) and heard == [(1, 1)]
    c.poll_corrections()  # counted once: the next poll starts where this one ended
    assert heard == [(1, 1)]


def test_full_queue_refused_token_and_outage_drop_and_count(review_service):  # noqa: F811
    url, _ = review_service
    metrics = Metrics()
    c = client(url, "edgecv_not-a-token", metrics, queue_size=1)
    assert c.offer(sample(1.0)) and not c.offer(sample(2.0, "drift"))  # the thread is not running: queue full
    assert flagged(metrics, "edgecv_review_flag_dropped_total", "drift") == 1

    t0 = time.monotonic()
    assert not c.send(sample(3.0))  # 401: our fault, not retried
    assert time.monotonic() - t0 < 3.0  # retrying would wait 0.5 + 1 + 2 s between its four attempts
    down = client(f"http://127.0.0.1:{free_port()}", "x", metrics, attempts=2)
    assert not down.send(sample(4.0, "random"))  # nothing listening: retried, then dropped
    assert flagged(metrics, "edgecv_review_flag_dropped_total", "low_confidence") == 1
    assert flagged(metrics, "edgecv_review_flag_dropped_total", "random") == 1
    assert down.poll_corrections() is None  # an unreachable service leaves the drift monitor alone


def test_thread_sends_queued_samples_and_stops(review_service):  # noqa: F811
    import os

    url, db = review_service
    metrics = Metrics()
    c = client(url, os.environ["EDGECV_TEST_REVIEW_TOKEN"], metrics, queue_size=8)
    c.start()
    for i in range(3):
        assert c.offer(sample(1_800_000_100.0 + i, "drift"))
    c.stop(timeout=10)
    assert not c.is_alive() and c.sent == 3
    with db.read() as sess:
        assert len(sess.scalars(select(Item)).all()) == 3
