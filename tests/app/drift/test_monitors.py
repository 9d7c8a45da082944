"""Drift monitors: statistics against direct computations, alarms, hysteresis, sampling caps."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import generate_latest

from app.drift.monitors import DriftConfig, DriftMonitor, SlidingHistogram, ks_binned, psi
from app.drift.sampling import ReviewSampler, SamplingConfig
from app.metrics import Metrics
from fleet.spec.manifest import ConfidenceHistogram

EDGES = [round(0.05 * i, 2) for i in range(21)]


def reference_from(scores: np.ndarray) -> ConfidenceHistogram:
    counts, _ = np.histogram(scores, bins=EDGES)
    return ConfidenceHistogram(edges=EDGES, counts=counts.tolist())


def healthy_scores(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.clip(rng.beta(8, 2, n), 0.0, 0.999)


def test_sliding_histogram_matches_numpy_on_the_last_window():
    rng = np.random.default_rng(0)
    values = rng.random(1000)
    h = SlidingHistogram(np.asarray(EDGES), size=300)
    for v in values:
        h.add(v)
    expected, _ = np.histogram(values[-300:], bins=EDGES)
    assert h.counts.tolist() == expected.tolist()
    assert h.mean == pytest.approx(values[-300:].mean())


def test_psi_and_ks_against_direct_formulas():
    p = np.array([10, 20, 30, 40], float)
    q = np.array([40, 30, 20, 10], float)
    pn, qn = p / p.sum(), q / q.sum()
    assert psi(p, q) == pytest.approx(np.sum((qn - pn) * np.log(qn / pn)))
    assert ks_binned(p, q) == pytest.approx(np.max(np.abs(np.cumsum(pn) - np.cumsum(qn))))
    assert psi(p, p) == pytest.approx(0.0)


def test_unchanged_stream_never_alarms_over_a_long_run():
    rng = np.random.default_rng(1)
    fired = []
    mon = DriftMonitor(reference_from(healthy_scores(rng, 20000)), 3, DriftConfig(window=1000, frame_window=200),
                       on_drift=lambda *a: fired.append(a))
    for _ in range(5000):  # ~15k detections, several windows
        n = rng.integers(1, 5)
        mon.observe_frame(healthy_scores(rng, n), rng.integers(0, 3, n))
        mon.check()
    assert fired == []
    assert mon.stats()["psi"] < 0.05


def test_a_confidence_shift_alarms_within_one_window_and_clears_with_hysteresis():
    rng = np.random.default_rng(2)
    fired = []
    metrics = Metrics()
    cfg = DriftConfig(window=500, frame_window=100, min_samples=200)
    mon = DriftMonitor(reference_from(healthy_scores(rng, 20000)), 3, cfg, metrics, lambda *a: fired.append(a))
    for _ in range(300):
        mon.observe_frame(healthy_scores(rng, 2), rng.integers(0, 3, 2))
        mon.check()
    assert fired == []
    # Darker scenes: the model grows unsure, scores slide towards 0.5.
    detections_until_alarm = 0
    while not any(k == "psi" for k, *_ in fired):
        mon.observe_frame(np.clip(rng.normal(0.45, 0.1, 2), 0.01, 0.99), rng.integers(0, 3, 2))
        mon.check()
        detections_until_alarm += 2
        assert detections_until_alarm <= cfg.window, "PSI did not alarm within one window"
    kinds = {k for k, *_ in fired}
    assert "psi" in kinds
    for _ in range(400):
        mon.observe_frame(np.clip(rng.normal(0.45, 0.1, 2), 0.01, 0.99), rng.integers(0, 3, 2))
        mon.check()
    assert "detection_entropy" in {k for k, *_ in fired}  # scores near 0.5 are high entropy
    assert len([k for k, *_ in fired if k == "psi"]) == 1, "one event per crossing"
    text = generate_latest(metrics.registry).decode()
    assert 'edgecv_drift_alarm{kind="psi"} 1.0' in text
    # Back to healthy: the alarm clears once PSI falls under threshold * clear_ratio.
    for _ in range(600):
        mon.observe_frame(healthy_scores(rng, 2), rng.integers(0, 3, 2))
        mon.check()
    assert not mon.alarms["psi"].active
    assert 'edgecv_drift_alarm{kind="psi"} 0.0' in generate_latest(metrics.registry).decode()


def test_class_mix_shift_and_correction_rate_and_accuracy():
    rng = np.random.default_rng(3)
    fired = []
    mon = DriftMonitor(reference_from(healthy_scores(rng, 5000)), 3,
                       DriftConfig(window=200, frame_window=50, min_samples=50), on_drift=lambda *a: fired.append(a[0]))
    for _ in range(100):
        mon.observe_frame(healthy_scores(rng, 3), np.array([0, 1, 2]))
        mon.check()
    for _ in range(60):
        mon.observe_frame(healthy_scores(rng, 3), np.array([2, 2, 2]))
        mon.check()
    assert "class_shift_psi" in fired
    mon.observe_review(reviewed=50, corrected=20)
    mon.check()
    assert "correction_rate" in fired
    mon.observe_validation(0.97)
    mon.check()
    assert "accuracy_f1" not in fired
    mon.observe_validation(0.80)
    mon.check()
    assert "accuracy_f1" in fired


def test_too_few_samples_never_alarm():
    rng = np.random.default_rng(4)
    fired = []
    mon = DriftMonitor(reference_from(healthy_scores(rng, 5000)), 2, DriftConfig(min_samples=200),
                       on_drift=lambda *a: fired.append(a))
    for _ in range(50):
        mon.observe_frame(np.array([0.4, 0.42]), np.array([0, 1]))
        mon.check()
    assert mon.stats()["psi"] > 1.0 and fired == []


def test_sampler_raises_rate_under_drift_and_caps_the_flow():
    now = [0.0]
    cfg = SamplingConfig(low_confidence_rate=0.05, drift_rate=1.0, random_rate=0.0, max_per_minute=60, burst=5)
    sampler = ReviewSampler(cfg, seed=0, clock=lambda: now[0])
    doubtful = np.array([0.9, 0.4])

    def flagged(drifting: bool, frames: int) -> int:
        n = 0
        for _ in range(frames):
            now[0] += 0.1  # 10 fps
            n += sampler.reason(doubtful, drifting) is not None
        return n

    calm = flagged(False, 600)  # 60 s: ~5 % of 600 = ~30, under the cap of 60/min
    storm = flagged(True, 600)  # every frame wanted: capped at ~60/min (+ the burst)
    assert 10 <= calm <= 50
    assert 55 <= storm <= 66
    assert sampler.refused > 400
    assert sampler.reason(np.array([0.95]), True) is None  # confident frames are not doubtful
