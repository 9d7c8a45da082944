"""Data passed between pipeline stages. Arrays, not lists of objects, so stages stay vectorised."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Frame:
    """One decoded camera frame (BGR, HxWx3 uint8) with when it was captured."""

    camera_id: str
    seq: int
    captured_at: float  # time.time() when read from the source
    image: np.ndarray
    monotonic: float = 0.0  # time.monotonic() at capture, for stage latencies


@dataclass(slots=True)
class Detections:
    """Detections of one frame in frame pixel coordinates.

    boxes: (N, 4) float32 x1, y1, x2, y2; scores: (N,) float32; class_ids: (N,) int32;
    track_ids: (N,) int64, -1 until the tracker assigns one.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    track_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def __post_init__(self) -> None:
        if self.track_ids.shape[0] != self.boxes.shape[0]:
            self.track_ids = np.full(self.boxes.shape[0], -1, np.int64)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def take(self, index: np.ndarray) -> Detections:
        return Detections(self.boxes[index], self.scores[index], self.class_ids[index], self.track_ids[index])


@dataclass(slots=True)
class Event:
    """A rule firing: what the alert bus and the evidence packager receive."""

    event_id: str
    time: float
    site_id: str
    device_id: str
    camera_id: str
    rule: str
    kind: str  # zone_intrusion | line_crossing | dwell | drift
    class_name: str
    score: float
    box: tuple[float, float, float, float]
    track_id: int
    model: str  # name@version
    frame_seq: int = -1
    extra: dict = field(default_factory=dict)

    def to_payload(self) -> dict:
        """The documented MQTT JSON payload (schema version 1)."""
        return {
            "schema": 1,
            "event_id": self.event_id,
            "time": self.time,
            "site": self.site_id,
            "device": self.device_id,
            "camera": self.camera_id,
            "rule": self.rule,
            "kind": self.kind,
            "class": self.class_name,
            "score": round(float(self.score), 4),
            "box": [round(float(v), 1) for v in self.box],
            "track_id": int(self.track_id),
            "model": self.model,
            "frame_seq": self.frame_seq,
            **({"extra": self.extra} if self.extra else {}),
        }
