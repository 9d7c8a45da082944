"""ByteTrack-style multi-object tracker, one per camera.

Each frame (`Tracker.update(dets, t)`):
1. every live track predicts its box at time t (constant velocity, smoothed; no Kalman filter);
2. high-score detections (score >= high_score) are matched to tracks by IoU with the Hungarian algorithm
   (scipy's linear_sum_assignment), pairs below `match_iou` rejected;
3. low-score detections (low_score <= score < high_score) are matched the same way to the tracks still
   unmatched (ByteTrack's trick: an occluded object's weak detection keeps its track alive), with `low_match_iou`;
4. unmatched high-score detections with score >= new_track_score start tentative tracks;
5. a tentative track becomes confirmed after `min_hits` matched frames and only then receives its id; a
   tentative track that misses a frame is dropped; a confirmed track that goes unmatched is kept (predicted)
   until `max_age_s` seconds and/or `max_age_frames` frames have passed since its last match.

Matching is class-consistent: a detection only ever joins a track of its own class. Ids are integers
increasing from 0 per Tracker (so per camera), given in confirmation order and never reused.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import linear_sum_assignment

from app.pipeline.geometry import anchors, iou_matrix
from app.pipeline.types import Detections


class TrackerConfig(BaseModel):
    """Tracker settings (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid")

    high_score: float = Field(0.5, ge=0, le=1, description="detections at or above are matched first")
    low_score: float = Field(0.1, ge=0, le=1, description="detections below are ignored")
    new_track_score: float = Field(0.6, ge=0, le=1, description="minimum score to start a track")
    match_iou: float = Field(0.2, gt=0, le=1, description="minimum IoU, high-score stage")
    low_match_iou: float = Field(0.5, gt=0, le=1, description="minimum IoU, low-score stage")
    min_hits: int = Field(2, ge=1, description="matched frames before a track is confirmed and gets an id")
    max_age_s: float | None = Field(1.0, gt=0, description="drop a track unmatched for this long")
    max_age_frames: int | None = Field(None, ge=1, description="drop a track unmatched for this many frames")
    velocity_smoothing: float = Field(0.5, gt=0, le=1, description="weight of the newest velocity estimate")
    history: int = Field(64, ge=2, description="anchor points kept per track")

    @model_validator(mode="after")
    def _check(self) -> TrackerConfig:
        if self.low_score > self.high_score:
            raise ValueError(f"low_score ({self.low_score}) must not exceed high_score ({self.high_score})")
        if self.max_age_s is None and self.max_age_frames is None:
            raise ValueError("set max_age_s or max_age_frames (or both), else tracks never expire")
        return self


@dataclass(slots=True)
class Track:
    """One tracked object. `track_id` is -1 while tentative."""

    class_id: int
    box: np.ndarray  # last matched box, x1 y1 x2 y2 (float64)
    score: float
    last_t: float  # time of the last match
    hits: int = 1
    misses: int = 0  # frames since the last match
    track_id: int = -1
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # box units per second
    history: deque = field(default_factory=deque)  # (t, x, y) anchors of matched boxes

    def predict(self, t: float) -> np.ndarray:
        return self.box + self.velocity * (t - self.last_t)


class Tracker:
    """Per-camera tracker; `update()` once per frame in time order. See the module docstring."""

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self._tracks: list[Track] = []
        self._next_id = 0
        self._last_t: float | None = None

    @property
    def tracks(self) -> list[Track]:
        """Live tracks, tentative ones included (read only)."""
        return list(self._tracks)

    def history(self, track_id: int) -> np.ndarray:
        """Anchor history (K, 3) as t, x, y of a live confirmed track, oldest first; empty if unknown/expired."""
        for tr in self._tracks:
            if tr.track_id == track_id and track_id >= 0:
                return np.array(tr.history, np.float64).reshape(-1, 3)
        return np.zeros((0, 3))

    def update(self, dets: Detections, t: float) -> Detections:
        """Associate one frame's detections (taken at time t, seconds) with the tracks.

        Returns the detections that belong to a track this frame, in input order, with `track_ids` set
        (-1 for tentative tracks). Unmatched low-score detections are left out: they only keep tracks alive.
        """
        if self._last_t is not None and t < self._last_t:
            raise ValueError(f"tracker times must not go backwards ({t} < {self._last_t})")
        self._last_t = t
        cfg = self.config
        boxes = np.asarray(dets.boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(dets.scores, np.float64)
        classes = np.asarray(dets.class_ids, np.int64)
        det_track: list[Track | None] = [None] * len(dets)

        high = np.flatnonzero(scores >= cfg.high_score)
        low = np.flatnonzero((scores >= cfg.low_score) & (scores < cfg.high_score))
        free = list(self._tracks)
        for det_idx, min_iou in ((high, cfg.match_iou), (low, cfg.low_match_iou)):
            predicted = np.array([tr.predict(t) for tr in free]).reshape(-1, 4)
            track_classes = np.array([tr.class_id for tr in free], np.int64)
            pairs = _match(boxes[det_idx], classes[det_idx], predicted, track_classes, min_iou)
            for d, k in pairs:
                det_track[det_idx[d]] = free[k]
            taken = {k for _, k in pairs}
            free = [tr for k, tr in enumerate(free) if k not in taken]

        for d, tr in enumerate(det_track):
            if tr is not None:
                self._matched(tr, boxes[d], float(scores[d]), t)
        self._age(free, t)
        for d in high:
            if det_track[d] is None and scores[d] >= cfg.new_track_score:
                det_track[d] = self._start(boxes[d], float(scores[d]), int(classes[d]), t)

        keep = np.array([d for d, tr in enumerate(det_track) if tr is not None], np.int64)
        out = dets.take(keep)
        out.track_ids = np.array([det_track[d].track_id for d in keep], np.int64)
        return out

    def _matched(self, tr: Track, box: np.ndarray, score: float, t: float) -> None:
        dt = t - tr.last_t
        if dt > 0:
            a = 1.0 if tr.hits == 1 else self.config.velocity_smoothing  # the first estimate has nothing to smooth
            tr.velocity = a * (box - tr.box) / dt + (1 - a) * tr.velocity
        tr.box, tr.score, tr.last_t, tr.misses = box.copy(), score, t, 0
        tr.hits += 1
        if tr.track_id < 0 and tr.hits >= self.config.min_hits:
            tr.track_id = self._new_id()
        self._remember(tr, t)

    def _age(self, unmatched: list[Track], t: float) -> None:
        """Count a miss on unmatched tracks; drop tentative ones and the confirmed ones past max age."""
        cfg = self.config
        gone = set()
        for tr in unmatched:
            tr.misses += 1
            too_old = (cfg.max_age_s is not None and t - tr.last_t > cfg.max_age_s) or (
                cfg.max_age_frames is not None and tr.misses > cfg.max_age_frames
            )
            if tr.track_id < 0 or too_old:
                gone.add(id(tr))
        self._tracks = [tr for tr in self._tracks if id(tr) not in gone]

    def _start(self, box: np.ndarray, score: float, class_id: int, t: float) -> Track:
        tr = Track(class_id=class_id, box=box.copy(), score=score, last_t=t, history=deque(maxlen=self.config.history))
        if self.config.min_hits <= 1:
            tr.track_id = self._new_id()
        self._remember(tr, t)
        self._tracks.append(tr)
        return tr

    def _remember(self, tr: Track, t: float) -> None:
        x, y = anchors(tr.box)[0]
        tr.history.append((t, float(x), float(y)))

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1


def _match(
    det_boxes: np.ndarray, det_classes: np.ndarray, trk_boxes: np.ndarray, trk_classes: np.ndarray, min_iou: float
) -> list[tuple[int, int]]:
    """Optimal one-to-one (det, track) pairs by IoU, same class only, IoU >= min_iou."""
    if len(det_boxes) == 0 or len(trk_boxes) == 0:
        return []
    iou = iou_matrix(det_boxes, trk_boxes)
    iou[det_classes[:, None] != trk_classes[None, :]] = 0.0
    rows, cols = linear_sum_assignment(-iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= min_iou]
