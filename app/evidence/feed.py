"""Feeds processed frames into the evidence rings off the pipeline loop.

JPEG-encoding a frame for the pre-roll ring costs 1-2 ms; the loop hands (frame, detections) to this
thread through a bounded queue and goes on. cv2.imencode releases the GIL, so the encode runs beside
the loop. When the queue is full the newest frame is skipped (counted): a clip with a missing frame
beats a stalled pipeline.

Clips show what the camera saw: frames a newer frame replaced before inference come in through
`add_seen` (from the camera's reader thread) and go into the rings without detections.
"""

from __future__ import annotations

import logging
import queue
import threading

from app.evidence.packager import EvidencePackager
from app.pipeline.types import Detections, Event, Frame

log = logging.getLogger(__name__)


class EvidenceFeeder(threading.Thread):
    def __init__(self, packager: EvidencePackager, maxsize: int = 64):
        super().__init__(name="evidence-feed", daemon=True)
        self.packager = packager
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.skipped = 0
        self.events = 0  # events the packager accepted
        self.written = 0  # packages written (known once closed)
        self.closed = False

    def add(self, frame: Frame, detections: Detections) -> None:
        self._put((frame, detections))

    def add_seen(self, frame: Frame) -> None:
        """A frame that never reached inference (replaced by a newer one): evidence only."""
        self._put((frame, None))

    def _put(self, item: tuple) -> None:
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.skipped += 1  # the frame itself went through the pipeline; only its evidence copy is lost
            if self.skipped in (1, 100, 10_000):
                log.warning("evidence encoder behind: %d frame(s) left out of the pre-roll rings", self.skipped)

    def on_event(self, event: Event) -> None:
        # Through the same queue, so the event is scheduled after the frames that led to it.
        try:
            self.queue.put(event, timeout=2.0)
        except queue.Full:
            log.error("evidence for %s lost: the evidence feed is stuck", event.event_id)

    def run(self) -> None:
        while (item := self.queue.get()) is not None:
            try:
                if isinstance(item, Event):
                    self.events += self.packager.on_event(item)
                else:
                    frame, dets = item
                    self.packager.add_frame(frame.camera_id, frame.captured_at, frame.seq, frame.image, dets,
                                            advance=dets is not None)
            except Exception:  # one bad frame must not end evidence for the rest of the run
                log.exception("evidence feed failed on %r", type(item).__name__)

    def close(self, timeout: float = 60.0) -> list:
        """Feed what is queued, package every pending event (cut short at the last frame), stop the encoder."""
        if self.closed:
            return []
        self.closed = True
        if self.is_alive():
            self.queue.put(None)
            self.join(timeout)
        written = self.packager.flush_all(timeout)
        self.packager.close()
        self.written = len(written)  # the packager keeps every package's future until flush_all
        return written
