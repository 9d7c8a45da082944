"""Flagged frames -> the review service's queue (POST /api/items), and its correction rate back.

The pipeline loop only calls `offer()`, which never blocks: a bounded queue, and a full queue drops the
sample (counted in edgecv_review_flag_dropped_total{reason}). One background thread JPEG-encodes each
sample, POSTs it with retries (items are idempotent by id, so a retry after a lost answer is harmless) and,
every `correction_poll_s`, reads GET /api/correction-rate?since=<last until> for the drift monitor.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import requests
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from app.metrics import Metrics
from app.pipeline.types import Detections
from fleet.spec.review_wire import IngestAnswer, IngestItem

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Sample:
    """One frame the sampler flagged."""

    reason: str  # low_confidence | drift | random | alert
    camera_id: str
    captured_at: float
    image: np.ndarray
    detections: Detections


def _retryable(exc: BaseException) -> bool:
    # Network trouble and 5xx/429 may pass; any other 4xx is our payload's fault and will not.
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return isinstance(exc, requests.RequestException)


class ReviewClient(threading.Thread):
    def __init__(
        self, url: str, token: str, *, site_id: str, device_id: str, model_ref: str, class_names: list[str],
        metrics: Metrics | None = None, timeout_s: float = 5.0, queue_size: int = 64, attempts: int = 4,
        correction_poll_s: float = 0.0, on_corrections: Callable[[int, int], None] | None = None,
        jpeg_quality: int = 85,
    ):
        super().__init__(name="review-client", daemon=True)
        self.url = url.rstrip("/")
        self.site_id, self.device_id, self.model_ref, self.class_names = site_id, device_id, model_ref, class_names
        self.metrics = metrics
        self.timeout_s, self.attempts, self.jpeg_quality = timeout_s, attempts, jpeg_quality
        self.correction_poll_s, self.on_corrections = correction_poll_s, on_corrections
        self.queue: queue.Queue[Sample] = queue.Queue(queue_size)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.stopping = threading.Event()
        self.sent = self.dropped = 0
        self.since: float | None = None  # the correction-rate window already counted

    # --- the loop's side --------------------------------------------------------------------------------

    def offer(self, sample: Sample) -> bool:
        try:
            self.queue.put_nowait(sample)
            return True
        except queue.Full:
            self._dropped(sample.reason, "queue full")
            return False

    # --- the thread -------------------------------------------------------------------------------------

    def run(self) -> None:
        next_poll = time.monotonic() + self.correction_poll_s
        while not self.stopping.is_set() or not self.queue.empty():
            try:
                sample = self.queue.get(timeout=0.2)
            except queue.Empty:
                sample = None
            if sample is not None:
                self.send(sample)
            if self.correction_poll_s and self.on_corrections and time.monotonic() >= next_poll \
                    and not self.stopping.is_set():
                next_poll = time.monotonic() + self.correction_poll_s
                self.poll_corrections()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued within `timeout`, then stop (what is left is dropped and counted)."""
        self.stopping.set()
        self.join(timeout)
        while True:
            try:
                self._dropped(self.queue.get_nowait().reason, "shutdown")
            except queue.Empty:
                break
        self.session.close()

    def item(self, sample: Sample) -> dict:
        """The POST /api/items body, validated with the server's own schema (fleet/spec/review_wire.py), so a
        sample the server would refuse is dropped here, with the field named, instead of retried."""
        h, w = sample.image.shape[:2]
        ok, jpeg = cv2.imencode(".jpg", sample.image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise ValueError("cannot JPEG-encode the frame")
        d = sample.detections
        boxes = []
        for box, cls, score, tid in zip(d.boxes, d.class_ids, d.scores, d.track_ids, strict=True):
            x1, x2 = np.clip(box[[0, 2]], 0, w)
            y1, y2 = np.clip(box[[1, 3]], 0, h)
            if x2 > x1 and y2 > y1:  # a box squeezed to nothing by the frame edge says nothing
                boxes.append({"box": [round(float(v), 2) for v in (x1, y1, x2, y2)],
                              "class": self.class_names[int(cls)], "score": round(float(score), 4),
                              "track_id": int(tid) if tid >= 0 else None})
        body = IngestItem(
            id=f"{self.device_id}-{sample.camera_id}-{int(sample.captured_at * 1000)}",
            reason=sample.reason, site=self.site_id, device=self.device_id, camera=sample.camera_id,
            model=self.model_ref, image=base64.b64encode(jpeg.tobytes()).decode(), width=w, height=h,
            boxes=boxes, captured_at=sample.captured_at,
        )
        return body.model_dump(mode="json", by_alias=True, exclude_none=True)

    def send(self, sample: Sample) -> bool:
        try:
            body = self.item(sample)
            for attempt in Retrying(stop=stop_after_attempt(self.attempts), retry=retry_if_exception(_retryable),
                                    wait=wait_exponential(multiplier=0.5, max=5), reraise=True):
                with attempt:
                    resp = self.session.post(f"{self.url}/api/items", json=body, timeout=self.timeout_s)
                    resp.raise_for_status()
                    IngestAnswer.model_validate_json(resp.content)  # a proxy's HTML page is not an answer
        except Exception as exc:  # never let a bad sample or an outage kill the thread
            detail = exc.response.text[:300] if isinstance(exc, requests.HTTPError) and exc.response is not None else ""
            self._dropped(sample.reason, f"{exc} {detail}".strip())
            return False
        self.sent += 1
        if self.metrics:
            self.metrics.review_flagged.labels(sample.reason).inc()
        return True

    def poll_corrections(self) -> dict | None:
        """Corrections per reviewed item for this device since the last poll -> on_corrections(reviewed, corrected)."""
        params: dict = {"site": self.site_id, "device": self.device_id, "model": self.model_ref}
        if self.since is not None:
            params["since"] = self.since
        try:
            resp = self.session.get(f"{self.url}/api/correction-rate", params=params, timeout=self.timeout_s)
            resp.raise_for_status()
            rate = resp.json()
        except (requests.RequestException, ValueError) as exc:
            log.warning("cannot read the correction rate from %s: %s", self.url, exc)
            return None
        self.since = rate["until"]
        if rate.get("reviewed") and self.on_corrections:
            self.on_corrections(int(rate["reviewed"]), int(rate["corrected"]))
        return rate

    def _dropped(self, reason: str, why: str) -> None:
        self.dropped += 1
        if self.metrics:
            self.metrics.review_dropped.labels(reason).inc()
        log.warning("review sample (%s) dropped: %s", reason, why)
