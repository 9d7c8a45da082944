"""Streaming drift monitors, O(1) per prediction over sliding windows.

Each statistic compares the recent window with a reference:
- confidence PSI and (binned) KS against the manifest's reference histogram; mean confidence;
- prediction entropy: per detection (binary entropy of its score, or of its class distribution
  when the decoder provides one), alarming on a rise above the entropy the reference histogram
  implies, and per frame (entropy of the frame's class mix);
- per-class prediction rate shift: PSI of the window's class mix against a frozen baseline window;
- the human correction rate (corrections per reviewed item, fed by the review service);
- validation accuracy when a gates run reports one.

Thresholds of the confidence statistics (KS, PSI, detection entropy) are not rules of thumb: unless
stated in the app config or in the manifest's reference_confidence.drift_thresholds, each is the
critical value of its statistic for the current window size, the reference's size and a per-check
false-alarm rate (`derive_thresholds`; fleet.spec.manifest.DriftThresholdsDoc says how). The correction
rate alarms when the Wilson lower bound of the rate is over its threshold (and clears when the upper bound
is under it), so a handful of reviews cannot raise it.

A statistic raises an alarm when it crosses its threshold with at least `min_samples` in the
window, and clears it past `clear_ratio` of the way back (hysteresis, so a statistic hovering at the
threshold does not flap). Alarms call `on_drift(kind, value, threshold)` once per crossing.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.metrics import Metrics
from fleet.spec.manifest import ConfidenceHistogram

EPS = 1e-4  # floor for empty bins' proportions (as Evidently does): PSI is undefined on zero probabilities


class DriftThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    psi: float | None = Field(None, gt=0, description="None: derived from the reference (chi-square quantile)")
    ks: float | None = Field(None, gt=0, le=1, description="None: the two-sample KS critical value")
    detection_entropy: float | None = Field(
        None, gt=0, description="rise of the mean detection entropy (nats) over the reference's; "
        "None: derived from the reference's window-to-window spread"
    )
    class_shift_psi: float = Field(0.25, gt=0)
    correction_rate: float = Field(0.2, gt=0, le=1, description="alarm when the Wilson lower bound is above it")
    min_accuracy_f1: float = Field(0.92, gt=0, le=1)


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window: int = Field(2000, ge=50, description="detections in the confidence window")
    frame_window: int = Field(500, ge=20, description="frames in the class-mix window")
    review_window: int = Field(200, ge=10, description="reviewed items in the correction-rate window")
    min_samples: int = Field(500, ge=10, description="fewer samples than this never alarm")
    false_alarm_rate: float | None = Field(
        None, gt=0, lt=0.5, description="per check of one statistic on an unshifted window; "
        "None: the manifest reference's (default 1e-5)"
    )
    review_confidence: float = Field(0.999, gt=0.5, lt=1, description="one-sided level of the Wilson bounds")
    clear_ratio: float = Field(0.8, gt=0, le=1)
    thresholds: DriftThresholds = DriftThresholds()


def chi2_quantile(p: float, dof: int) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (no scipy on the device): within 3 % of
    scipy.stats.chi2.ppf for 9+ degrees of freedom and p up to 1 - 1e-6; in the far tail it errs high
    (fewer false alarms), by up to 7 % at 3 degrees of freedom and p = 1 - 1e-6."""
    z = NormalDist().inv_cdf(p)
    k = max(dof, 1)
    return k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3


def ks_critical(alpha: float, n: int, m: float) -> float:
    """Asymptotic two-sample Kolmogorov-Smirnov critical value at level alpha for samples of n and m."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def wilson_bounds(successes: float, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (lower, upper)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


class ReferenceEntropy:
    """Mean and spread of one detection's binary entropy under the reference histogram; scores are taken
    as spread evenly inside each bin (a bin's centre alone misjudges the entropy where it bends most)."""

    def __init__(self, reference: ConfidenceHistogram, points_per_bin: int = 64):
        edges = np.asarray(reference.edges, np.float64)
        weights = np.asarray(reference.counts, np.float64)
        weights = weights / weights.sum()
        frac = (np.arange(points_per_bin) + 0.5) / points_per_bin
        grid = edges[:-1, None] + (edges[1:] - edges[:-1])[:, None] * frac[None, :]
        h = binary_entropy(grid)
        self.mean = float(np.sum(weights * h.mean(axis=1)))
        self.sd = float(math.sqrt(max(np.sum(weights * (h**2).mean(axis=1)) - self.mean**2, 0.0)))


def derive_thresholds(reference: ConfidenceHistogram, n: int, alpha: float,
                      entropy: ReferenceEntropy | None = None) -> dict[str, float]:
    """Critical values of the confidence statistics for a window of n detections (see the module doc)."""
    counts = np.asarray(reference.counts, np.float64)
    m = float(counts.sum())
    k = int(np.count_nonzero(counts))
    n = max(n, 1)
    z = NormalDist().inv_cdf(1 - alpha)
    return {
        "ks": ks_critical(alpha, n, m),
        "psi": chi2_quantile(1 - alpha, k - 1) * (1 / n + 1 / m),
        "detection_entropy": z * (entropy or ReferenceEntropy(reference)).sd * math.sqrt(1 / n + 1 / m),
    }


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
    p = np.asarray(expected, np.float64)
    q = np.asarray(actual, np.float64)
    # The floor goes on proportions, not counts: on counts it is worth EPS/N and an empty bin weighs ln(N/EPS).
    p = np.clip(p / max(p.sum(), 1e-12), EPS, None)
    q = np.clip(q / max(q.sum(), 1e-12), EPS, None)
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
        self.reference_histogram = reference
        self.reference = np.asarray(reference.counts, np.float64)
        # Expected detection entropy under the reference: the entropy alarm is a rise above it.
        self.entropy_ref = ReferenceEntropy(reference)
        self.reference_entropy = self.entropy_ref.mean
        documented = reference.drift_thresholds
        self.false_alarm_rate = self.config.false_alarm_rate or documented.false_alarm_rate
        # Stated thresholds (app config first, then the manifest); the rest are derived per window size.
        self.stated = {k: getattr(self.config.thresholds, k) or getattr(documented, k)
                       for k in ("ks", "psi", "detection_entropy")}
        self._derived_for: tuple[int, dict[str, float]] = (-1, {})
        self.review_z = NormalDist().inv_cdf(self.config.review_confidence)
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

    def limits(self) -> dict[str, float]:
        """The thresholds in force for the current window (stated ones, else derived for its size)."""
        n = self.confidence.n
        if self._derived_for[0] != n:
            self._derived_for = (n, derive_thresholds(self.reference_histogram, n, self.false_alarm_rate,
                                                              self.entropy_ref))
        derived = self._derived_for[1]
        t = self.config.thresholds
        out = {k: self.stated[k] or derived[k] for k in ("ks", "psi", "detection_entropy")}
        out.update(class_shift_psi=t.class_shift_psi, correction_rate=t.correction_rate,
                   accuracy_f1=t.min_accuracy_f1)
        return out

    def check(self) -> dict[str, bool]:
        """Evaluate thresholds, update gauges, fire `on_drift` on new crossings. Returns alarm states."""
        s = self.stats()
        lim = self.limits()
        keep = self.config.clear_ratio
        enough = self.confidence.n >= self.config.min_samples
        states: dict[str, bool] = {}
        rise = None if s["detection_entropy"] is None else s["detection_entropy"] - self.reference_entropy
        for kind, value, ready in (
            ("psi", s["psi"], enough),
            ("ks", s["ks"], enough),
            ("detection_entropy", rise, enough),
            ("class_shift_psi", s["class_shift_psi"], self.class_baseline is not None),
        ):
            if value is None or not ready:
                states[kind] = self._state(kind)
            else:  # higher is worse: alarm above the limit, clear under limit * clear_ratio
                states[kind] = self._update(kind, value > lim[kind], value < lim[kind] * keep, value, lim[kind])
        n_rev = self.corrections.n
        if n_rev:
            low, high = wilson_bounds(round(self.corrections.total), n_rev, self.review_z)
            # Alarm only when even the optimistic end of the interval is over the limit; clear when the
            # pessimistic end is back under it (the interval itself is the hysteresis).
            states["correction_rate"] = self._update(
                "correction_rate", low > lim["correction_rate"], high < lim["correction_rate"],
                s["correction_rate"], lim["correction_rate"])
        if self.accuracy_f1 is not None:  # lower is worse: alarm below, clear clear_ratio of the way back
            f1, floor = self.accuracy_f1, lim["accuracy_f1"]
            clear_at = floor + (1 - floor) * (1 - keep)
            states["accuracy_f1"] = self._update("accuracy_f1", f1 < floor, f1 >= clear_at, f1, floor)
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

    def _state(self, kind: str) -> bool:
        return self.alarms.setdefault(kind, _Alarm()).active

    def _update(self, kind: str, fire: bool, clear: bool, value: float, limit: float) -> bool:
        alarm = self.alarms.setdefault(kind, _Alarm())
        if not alarm.active and fire:
            alarm.active = True
            if self.on_drift:
                self.on_drift(kind, value, limit)
        elif alarm.active and clear:
            alarm.active = False
        return alarm.active
