"""The pipeline's sinks (app.pipeline.ports.FrameSink): alerts to MQTT, evidence packages, review samples.

Each adapts one collaborator to `handle(Handled)` / `close(timeout_s)`. None blocks the loop: the
publisher spools (or holds in memory on a full disk), the evidence feed and the review client queue.
`close` is bounded: what cannot finish in time is left (spooled alerts stay on disk for the next start).
"""

from __future__ import annotations

import logging
import threading

from app.alerts.publisher import AlertPublisher
from app.drift.sampling import ReviewSampler
from app.evidence.feed import EvidenceFeeder
from app.pipeline.ports import Handled
from app.review_client import ReviewClient, Sample

log = logging.getLogger(__name__)


class AlertSink:
    name = "alerts"

    def __init__(self, publisher: AlertPublisher):
        self.publisher = publisher

    def handle(self, item: Handled) -> None:
        if item.events:
            self.publisher.publish_events(item.events)

    def close(self, timeout_s: float) -> None:
        self.publisher.close(drain_timeout=max(0.0, timeout_s))


class EvidenceSink:
    name = "evidence"

    def __init__(self, feeder: EvidenceFeeder):
        self.feeder = feeder

    def handle(self, item: Handled) -> None:
        self.feeder.add(item.frame, item.tracked)
        for e in item.events:
            self.feeder.on_event(e)

    def close(self, timeout_s: float) -> None:
        # Packaging pending events encodes clips: bounded by running it aside and waiting at most timeout_s.
        closer = threading.Thread(target=self.feeder.close, args=(timeout_s,), name="evidence-close", daemon=True)
        closer.start()
        closer.join(timeout_s)
        if closer.is_alive():
            log.error("evidence not all packaged within %.1fs of shutdown; what is pending is lost", timeout_s)


class ReviewSink:
    name = "review"

    def __init__(self, client: ReviewClient, sampler: ReviewSampler):
        self.client, self.sampler = client, sampler

    def handle(self, item: Handled) -> None:
        dets = item.detections  # the reviewer sees every detection, tracked or not
        reason = self.sampler.reason(dets.scores, item.drift_alarming)
        if reason is not None:
            f = item.frame
            self.client.offer(Sample(reason, f.camera_id, f.captured_at, f.image, dets))

    def close(self, timeout_s: float) -> None:
        if self.client.is_alive():
            self.client.stop(max(0.0, timeout_s))
