"""ByteTrack-style multi-object tracker with a Kalman motion model, one per camera.

Each frame (`Tracker.update(dets, t)`, t in seconds):
1. every live track's Kalman filter predicts its box at time t (constant velocity; see below);
2. high-score detections (score >= high_score) are matched to all tracks, lost ones included, by IoU with the
   predicted boxes, Hungarian algorithm (scipy's linear_sum_assignment), pairs below `match_iou` rejected;
   a lost confirmed track matched here is re-activated with its old id;
3. low-score detections (low_score <= score < high_score) are matched the same way to the tracks still
   unmatched (ByteTrack's trick: an occluded object's weak detection keeps its track alive), with `low_match_iou`;
4. unmatched high-score detections with score >= new_track_score start tentative tracks, unless they lie on a
   track matched this frame (IoU >= `duplicate_iou`: a second box on one object is not a new object);
5. a tentative track becomes confirmed after `min_hits` consecutive matched frames and only then receives its
   id; a tentative track that misses a frame is dropped; a confirmed track that goes unmatched is lost (kept
   and predicted, not reported) until `max_age_s` seconds and/or `max_age_frames` frames have passed since its
   last match.

Motion model: each box edge (x1, y1, x2, y2) has its own position/velocity Kalman filter with white-noise
acceleration, all in time (seconds), not frames, so the same settings hold at 5, 10 or 30 fps and across
dropped frames. Noise is relative to the box's height (a near person's box jitters more in pixels than a far
one's), so the four filters of a track share one normalised covariance (3 numbers) and every track is
predicted and updated in one vectorised step: the cost stays about that of constant-velocity prediction.

Matching is class-consistent: a detection only ever joins a track of its own class. Ids are integers
increasing from 0 per Tracker (so per camera), given in confirmation order and never reused.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import linear_sum_assignment

from app.pipeline.geometry import iou_matrix
from app.pipeline.types import Detections


class TrackerConfig(BaseModel):
    """Tracker settings (unknown keys are rejected). Defaults tuned on synthetic sequences (bench/tracking.py)."""

    model_config = ConfigDict(extra="forbid")

    high_score: float = Field(0.5, ge=0, le=1, description="detections at or above are matched first")
    low_score: float = Field(0.1, ge=0, le=1, description="detections below are ignored")
    new_track_score: float = Field(0.65, ge=0, le=1, description="minimum score to start a track")
    match_iou: float = Field(0.1, gt=0, le=1, description="minimum IoU, high-score stage")
    low_match_iou: float = Field(0.5, gt=0, le=1, description="minimum IoU, low-score stage")
    duplicate_iou: float = Field(0.4, gt=0, le=1, description="a new box this close to a matched track starts none")
    min_hits: int = Field(2, ge=1, description="consecutive matched frames before a track is confirmed and gets an id")
    max_age_s: float | None = Field(3.0, gt=0, description="drop a track unmatched for this long")
    max_age_frames: int | None = Field(None, ge=1, description="drop a track unmatched for this many frames")
    measurement_noise: float = Field(0.1, gt=0, description="std of a detected box edge, in box heights")
    motion_noise: float = Field(0.3, gt=0, description="std of acceleration, box heights per s^2")
    initial_speed: float = Field(2.0, gt=0, description="prior std of a new track's speed, box heights per s")
    history: int = Field(64, ge=2, description="anchor points kept per track")

    @model_validator(mode="after")
    def _check(self) -> TrackerConfig:
        if self.low_score > self.high_score:
            raise ValueError(f"low_score ({self.low_score}) must not exceed high_score ({self.high_score})")
        if self.max_age_s is None and self.max_age_frames is None:
            raise ValueError("set max_age_s or max_age_frames (or both), else tracks never expire")
        return self


@dataclass(frozen=True, slots=True)
class Track:
    """A snapshot of one live track. `track_id` is -1 while tentative."""

    track_id: int
    class_id: int
    box: np.ndarray  # last matched box, x1 y1 x2 y2
    predicted: np.ndarray  # the filter's box at the last update time
    velocity: np.ndarray  # of the four edges, pixels per second
    score: float
    last_t: float  # time of the last match
    hits: int
    misses: int  # frames since the last match


class Tracker:
    """Per-camera tracker; `update()` once per frame in time order. See the module docstring.

    Track state lives in parallel arrays (one row per live track) so every step is vectorised.
    """

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self._next_id = 0
        self._last_t: float | None = None
        self._x = np.zeros((0, 8))  # x1 y1 x2 y2, then their velocities (pixels, seconds)
        self._p = np.zeros((0, 3))  # normalised covariance per track: var(pos), cov(pos, vel), var(vel)
        self._box = np.zeros((0, 4))  # last matched box
        self._score = np.zeros(0)
        self._class = np.zeros(0, np.int64)
        self._ids = np.zeros(0, np.int64)
        self._hits = np.zeros(0, np.int64)  # consecutive matched frames
        self._misses = np.zeros(0, np.int64)
        self._last = np.zeros(0)  # time of the last match
        self._history: list[deque] = []

    @property
    def tracks(self) -> list[Track]:
        """Live tracks, tentative and lost ones included (snapshots)."""
        return [
            Track(int(self._ids[k]), int(self._class[k]), self._box[k].copy(), self._x[k, :4].copy(),
                  self._x[k, 4:].copy(), float(self._score[k]), float(self._last[k]), int(self._hits[k]),
                  int(self._misses[k]))
            for k in range(len(self._ids))
        ]

    def history(self, track_id: int) -> np.ndarray:
        """Anchor history (K, 3) as t, x, y of a live confirmed track, oldest first; empty if unknown/expired."""
        if track_id >= 0:
            for k in np.flatnonzero(self._ids == track_id):
                return np.array(self._history[k], np.float64).reshape(-1, 3)
        return np.zeros((0, 3))

    def update(self, dets: Detections, t: float) -> Detections:
        """Associate one frame's detections (taken at time t, seconds) with the tracks.

        Returns the detections that belong to a track this frame, in input order, with `track_ids` set
        (-1 for tentative tracks). Unmatched low-score detections are left out: they only keep tracks alive.
        """
        if self._last_t is not None and t < self._last_t:
            raise ValueError(f"tracker times must not go backwards ({t} < {self._last_t})")
        dt = 0.0 if self._last_t is None else t - self._last_t
        self._last_t = t
        cfg = self.config
        boxes = np.asarray(dets.boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(dets.scores, np.float64)
        classes = np.asarray(dets.class_ids, np.int64)
        self._predict(dt)

        n = len(self._ids)
        det_track = np.full(len(scores), -1, np.int64)  # row of the track each detection joined
        free = np.ones(n, bool)
        if n:
            high = np.flatnonzero(scores >= cfg.high_score)
            low = np.flatnonzero((scores >= cfg.low_score) & (scores < cfg.high_score))
            for det_idx, min_iou in ((high, cfg.match_iou), (low, cfg.low_match_iou)):
                rows = np.flatnonzero(free)
                if len(det_idx) == 0 or len(rows) == 0:
                    continue
                iou = iou_matrix(boxes[det_idx], self._x[rows, :4])
                iou[classes[det_idx][:, None] != self._class[rows][None, :]] = 0.0
                d, k = linear_sum_assignment(iou, maximize=True)
                ok = iou[d, k] >= min_iou
                det_track[det_idx[d[ok]]] = rows[k[ok]]
                free[rows[k[ok]]] = False

        matched_det = np.flatnonzero(det_track >= 0)
        self._correct(det_track[matched_det], boxes[matched_det], scores[matched_det], t)
        new = np.flatnonzero((det_track < 0) & (scores >= cfg.new_track_score) & (scores >= cfg.high_score))
        if len(new) and len(matched_det):  # a second box on an object already matched is no new object
            dup = iou_matrix(boxes[new], boxes[matched_det]).max(axis=1) >= cfg.duplicate_iou
            new = new[~dup]
        alive = self._age(free, t)
        if not alive.all():
            det_track[matched_det] = np.cumsum(alive)[det_track[matched_det]] - 1  # rows after dropping the dead
            self._keep(alive)
        det_track[new] = self._start(boxes[new], scores[new], classes[new], t)

        keep = np.flatnonzero(det_track >= 0)
        out = dets.take(keep)
        out.track_ids = self._ids[det_track[keep]].copy()
        return out

    # --- the Kalman filter, vectorised over tracks --------------------------------------------------------

    def _predict(self, dt: float) -> None:
        if dt <= 0 or not len(self._ids):
            return
        x, p = self._x, self._p
        x[:, :4] += x[:, 4:] * dt
        q = self.config.motion_noise**2
        p11, p12, p22 = p[:, 0], p[:, 1], p[:, 2]
        p[:, 0] = p11 + 2 * dt * p12 + dt * dt * p22 + q * dt**3 / 3
        p[:, 1] = p12 + dt * p22 + q * dt**2 / 2
        p[:, 2] = p22 + q * dt

    def _correct(self, rows: np.ndarray, boxes: np.ndarray, scores: np.ndarray, t: float) -> None:
        if not len(rows):
            return
        p = self._p[rows]
        s = p[:, 0] + self.config.measurement_noise**2
        k1, k2 = p[:, 0] / s, p[:, 1] / s
        x = self._x[rows]
        innovation = boxes - x[:, :4]
        x[:, :4] += k1[:, None] * innovation
        x[:, 4:] += k2[:, None] * innovation
        self._x[rows] = x
        self._p[rows] = np.stack([p[:, 0] * (1 - k1), p[:, 1] * (1 - k1), p[:, 2] - k2 * p[:, 1]], axis=1)
        self._box[rows] = boxes
        self._score[rows] = scores
        self._last[rows] = t
        self._hits[rows] = np.where(self._misses[rows] > 0, 1, self._hits[rows] + 1)  # consecutive matches
        self._misses[rows] = 0
        for k in rows[(self._ids[rows] < 0) & (self._hits[rows] >= self.config.min_hits)]:
            self._ids[k] = self._new_id()
        xs, ys = ((boxes[:, 0] + boxes[:, 2]) * 0.5).tolist(), boxes[:, 3].tolist()
        for k, x, y in zip(rows.tolist(), xs, ys, strict=True):
            self._history[k].append((t, x, y))

    # --- track life -----------------------------------------------------------------------------------

    def _age(self, unmatched: np.ndarray, t: float) -> np.ndarray:
        """Count a miss on unmatched tracks; the rows to keep (tentative misses and expired lost tracks go)."""
        cfg = self.config
        self._misses[unmatched] += 1
        dead = unmatched & (self._ids < 0)
        if cfg.max_age_s is not None:
            dead |= unmatched & (t - self._last > cfg.max_age_s)
        if cfg.max_age_frames is not None:
            dead |= self._misses > cfg.max_age_frames
        return ~dead

    def _keep(self, alive: np.ndarray) -> None:
        for name in ("_x", "_p", "_box", "_score", "_class", "_ids", "_hits", "_misses", "_last"):
            setattr(self, name, getattr(self, name)[alive])
        self._history = [h for h, a in zip(self._history, alive.tolist(), strict=True) if a]

    def _start(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, t: float) -> np.ndarray:
        """Add tentative tracks (confirmed at once when min_hits is 1); their rows."""
        m, cfg = len(scores), self.config
        first = len(self._ids)
        if not m:
            return np.zeros(0, np.int64)
        self._x = np.concatenate([self._x, np.concatenate([boxes, np.zeros((m, 4))], axis=1)])
        self._p = np.concatenate([self._p, np.tile([cfg.measurement_noise**2, 0.0, cfg.initial_speed**2], (m, 1))])
        self._box = np.concatenate([self._box, boxes])
        self._score = np.concatenate([self._score, scores])
        self._class = np.concatenate([self._class, classes])
        ids = np.full(m, -1, np.int64)
        if cfg.min_hits <= 1:
            ids = np.arange(self._next_id, self._next_id + m)
            self._next_id += m
        self._ids = np.concatenate([self._ids, ids])
        self._hits = np.concatenate([self._hits, np.ones(m, np.int64)])
        self._misses = np.concatenate([self._misses, np.zeros(m, np.int64)])
        self._last = np.concatenate([self._last, np.full(m, t)])
        for b in boxes:
            self._history.append(deque([(t, float(b[0] + b[2]) * 0.5, float(b[3]))], maxlen=cfg.history))
        return np.arange(first, first + m)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1
