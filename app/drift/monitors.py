"""Streaming drift monitors, O(1) per prediction over sliding windows.

Each statistic compares the recent window with a reference:
- confidence PSI and (binned) KS against the manifest's reference histogram; mean confidence;
- prediction entropy: per detection (binary entropy of its score, or of its class distribution
  when the decoder provides one), alarming on a rise above the entropy the reference histogram
  implies, and per frame (entropy of the frame's class mix);
- per-class prediction rate shift: PSI of the window's class mix against a frozen baseline window;
- the human correction rate (corrections per reviewed item, fed by the review service);
- validation accuracy when a gates run reports one.

A statistic raises an alarm when it crosses its threshold with at least `min_samples` in the
window, and clears it below `threshold * clear_ratio` (hysteresis, so a statistic hovering at the
threshold does not flap). Alarms call `on_drift(kind, value, threshold)` once per crossing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.metrics import Metrics
from fleet.spec.manifest import ConfidenceHistogram

EPS = 1e-4  # floor for empty bins: PSI is undefined on zero probabilities


class DriftThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    psi: float = Field(0.2, gt=0, description="0.1 moderate, 0.2 significant shift (industry rule of thumb)")
    ks: float = Field(0.2, gt=0, le=1)
    detection_entropy: float = Field(
        0.15, gt=0, description="rise of the mean detection entropy (nats) over the reference histogram's"
    )
    class_shift_psi: float = Field(0.25, gt=0)
    correction_rate: float = Field(0.2, gt=0, le=1)
    min_accuracy_f1: float = Field(0.92, gt=0, le=1)


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window: int = Field(2000, ge=50, description="detections in the confidence window")
    frame_window: int = Field(500, ge=20, description="frames in the class-mix window")
    review_window: int = Field(200, ge=10, description="reviewed items in the correction-rate window")
    # Under no drift N*PSI is roughly chi-square with bins-1 degrees of freedom: at 20 bins and
    # 500 samples its extreme tail stays near 0.12, well under the 0.2 threshold.
    min_samples: int = Field(500, ge=10, description="fewer samples than this never alarm")
    clear_ratio: float = Field(0.8, gt=0, le=1)
    thresholds: DriftThresholds = DriftThresholds()


class SlidingHistogram:
    """Bin counts of the last `size` values: add() is O(1) (one increment, one decrement)."""

    def __init__(self, edges: np.ndarray, size: int):
        self.edges = np.asarray(edges, np.float64)
        self.counts = np.zeros(len(self.edges) - 1, np.int64)
        self.ring = np.full(size, -1, np.int64)
        self.pos = 0
        self.total = 0.0  # running sum of values, for the mean
        self.values = np.zeros(size, np.float64)
        self.n = 0

    def add(self, value: float) -> None:
        b = int(np.searchsorted(self.edges, value, side="right") - 1)
        b = min(max(b, 0), len(self.counts) - 1)
        old = self.ring[self.pos]
        if old >= 0:
            self.counts[old] -= 1
            self.total -= self.values[self.pos]
        else:
            self.n += 1
        self.ring[self.pos] = b
        self.values[self.pos] = value
        self.counts[b] += 1
        self.total += value
        self.pos = (self.pos + 1) % len(self.ring)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def probabilities(self) -> np.ndarray:
        return self.counts / max(self.n, 1)


class SlidingMean:
    """Mean of the last `size` values in O(1)."""

    def __init__(self, size: int):
        self.buf: deque[float] = deque(maxlen=size)
        self.total = 0.0

    def add(self, value: float) -> None:
        if len(self.buf) == self.buf.maxlen:
            self.total -= self.buf[0]
        self.buf.append(value)
        self.total += value

    @property
    def n(self) -> int:
        return len(self.buf)

    @property
    def mean(self) -> float:
        return self.total / len(self.buf) if self.buf else 0.0


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two distributions over the same bins."""
    p = np.clip(np.asarray(expected, np.float64), EPS, None)
    q = np.clip(np.asarray(actual, np.float64), EPS, None)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((q - p) * np.log(q / p)))


def ks_binned(expected: np.ndarray, actual: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic on binned data: the largest CDF gap at the bin edges."""
    p = np.asarray(expected, np.float64)
    q = np.asarray(actual, np.float64)
    return float(np.max(np.abs(np.cumsum(p / p.sum()) - np.cumsum(q / max(q.sum(), 1e-12)))))


def binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-9, 1 - 1e-9)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def categorical_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row of class probabilities (rows normalised first)."""
    probs = np.clip(np.asarray(probs, np.float64), 1e-12, None)
    probs = probs / probs.sum(axis=-1, keepdims=True)
    return -(probs * np.log(probs)).sum(axis=-1)


@dataclass
class _Alarm:
    active: bool = False


class DriftMonitor:
    """Feed it every frame's detections; read `stats()`; alarms go to `on_drift` and the gauges."""

    def __init__(
        self,
        reference: ConfidenceHistogram,
        num_classes: int,
        config: DriftConfig | None = None,
        metrics: Metrics | None = None,
        on_drift: Callable[[str, float, float], None] | None = None,
    ):
        self.config = config or DriftConfig()
        self.metrics = metrics
        self.on_drift = on_drift
        self.reference = np.asarray(reference.counts, np.float64)
        # Expected detection entropy under the reference: the entropy alarm is a rise above it.
        edges = np.asarray(reference.edges, np.float64)
        centres = (edges[:-1] + edges[1:]) / 2
        self.reference_entropy = float(np.sum(self.reference / self.reference.sum() * binary_entropy(centres)))
        self.confidence = SlidingHistogram(np.asarray(reference.edges), self.config.window)
        self.det_entropy = SlidingMean(self.config.window)
        self.frame_entropy = SlidingMean(self.config.frame_window)
        self.num_classes = num_classes
        # Class mix: counts over the recent frames, and a baseline frozen from the first full window.
        self.class_ring: deque[np.ndarray] = deque()
        self.class_counts = np.zeros(num_classes, np.int64)
        self.class_baseline: np.ndarray | None = None
        self.corrections = SlidingMean(self.config.review_window)
        self.accuracy_f1: float | None = None
        self.alarms: dict[str, _Alarm] = {}

    # -- feeding -----------------------------------------------------------------------------------

    def observe_frame(self, scores: np.ndarray, class_ids: np.ndarray, class_probs: np.ndarray | None = None) -> None:
        """One frame's detections (after NMS). O(detections) = O(1) per prediction."""
        scores = np.asarray(scores, np.float64)
        for s in scores:
            self.confidence.add(float(s))
        ent = categorical_entropy(class_probs) if class_probs is not None else binary_entropy(scores)
        for e in ent:
            self.det_entropy.add(float(e))
        counts = np.bincount(np.asarray(class_ids, np.int64), minlength=self.num_classes)[: self.num_classes]
        if counts.sum():
            self.frame_entropy.add(float(categorical_entropy(counts[None, :].astype(np.float64))[0]))
        self._push_class_counts(counts)

    def _push_class_counts(self, counts: np.ndarray) -> None:
        self.class_ring.append(counts)
        self.class_counts += counts
        if len(self.class_ring) > self.config.frame_window:
            self.class_counts -= self.class_ring.popleft()
        if self.class_baseline is None and len(self.class_ring) == self.config.frame_window:
            self.class_baseline = self.class_counts.copy()

    def observe_review(self, reviewed: int, corrected: int) -> None:
        """From the review service: of `reviewed` items, `corrected` needed a correction."""
        for i in range(reviewed):
            self.corrections.add(1.0 if i < corrected else 0.0)

    def observe_validation(self, f1: float) -> None:
        """Accuracy (macro F1) of a validation run (the gates tool's output)."""
        self.accuracy_f1 = f1

    # -- reading -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, float | None]:
        n = self.confidence.n
        actual = self.confidence.counts.astype(np.float64)
        out: dict[str, float | None] = {
            "psi": psi(self.reference, actual) if n else None,
            "ks": ks_binned(self.reference, actual) if n else None,
            "mean_confidence": self.confidence.mean if n else None,
            "detection_entropy": self.det_entropy.mean if self.det_entropy.n else None,
            "frame_entropy": self.frame_entropy.mean if self.frame_entropy.n else None,
            "class_shift_psi": None,
            "correction_rate": self.corrections.mean if self.corrections.n else None,
            "accuracy_f1": self.accuracy_f1,
        }
        if self.class_baseline is not None and self.class_counts.sum():
            out["class_shift_psi"] = psi(self.class_baseline, self.class_counts)
        return out

    def check(self) -> dict[str, bool]:
        """Evaluate thresholds, update gauges, fire `on_drift` on new crossings. Returns alarm states."""
        t = self.config.thresholds
        s = self.stats()
        enough = self.confidence.n >= self.config.min_samples
        checks = {
            "psi": (s["psi"], t.psi, enough),
            "ks": (s["ks"], t.ks, enough),
            "detection_entropy": (
                None if s["detection_entropy"] is None else s["detection_entropy"] - self.reference_entropy,
                t.detection_entropy,
                enough,
            ),
            "class_shift_psi": (s["class_shift_psi"], t.class_shift_psi, self.class_baseline is not None),
            "correction_rate": (
                s["correction_rate"], t.correction_rate, self.corrections.n >= min(self.config.min_samples, 20)
            ),
        }
        states = {kind: self._update(kind, value, limit, ready) for kind, (value, limit, ready) in checks.items()}
        if self.accuracy_f1 is not None:  # lower is worse: alarm below the threshold
            states["accuracy_f1"] = self._update("accuracy_f1", -self.accuracy_f1, -t.min_accuracy_f1, True)
        if self.metrics:
            for kind, value in s.items():
                if value is not None:
                    self.metrics.drift.labels(kind).set(value)
            for kind, active in states.items():
                self.metrics.drift_alarm.labels(kind).set(1 if active else 0)
            if s["mean_confidence"] is not None:
                self.metrics.mean_confidence.set(s["mean_confidence"])
        return states

    @property
    def alarming(self) -> bool:
        return any(a.active for a in self.alarms.values())

    def _update(self, kind: str, value: float | None, limit: float, ready: bool) -> bool:
        alarm = self.alarms.setdefault(kind, _Alarm())
        if value is None or not ready:
            return alarm.active
        # Hysteresis on the distance to the limit; limits may be negative (lower-is-worse stats).
        clear_at = limit * self.config.clear_ratio if limit > 0 else limit / self.config.clear_ratio
        if not alarm.active and value > limit:
            alarm.active = True
            if self.on_drift:
                shown = -value if kind == "accuracy_f1" else value
                self.on_drift(kind, shown, abs(limit))
        elif alarm.active and value < clear_at:
            alarm.active = False
        return alarm.active
