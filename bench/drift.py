"""Drift alarms against a reference implementation (Evidently) on the same simulated streams.

Streams: detections in frames of 1-5, confidences Beta with mean 0.75 and concentration 10 (the
reference: a 20-bin histogram of 10,000 held-out detections, whose raw values Evidently gets), classes
from NanoDet's 80 with a long-tailed (Zipf) mix. Our DriftMonitor at default settings is checked every
10 frames (about 30 detections; the app checks once a second); Evidently's tests run every 100 detections
(every 500 in the no-shift runs, so its false-alarm shares are lower bounds) on the same last `window` detections against the raw reference: its default for numerical data with over
1,000 reference rows (Wasserstein, normed, 0.1), PSI (0.1) and KS (p < 0.05), and KS at our per-check
false-alarm rate (the same budget as ours).

- false alarms: share of seeds with any alarm in `--detections` detections and no shift;
- detection delay: detections after a graded shift until the first alarm (median over the seeds that
  detect within `--detections`), and the ratio ours / reference for every reference that detects;
- correction rate: seeds false-alarming at a true 10 % over 1,000 reviews, and reviews until the alarm
  at a true 35 %.

    .venv/bin/python -m bench.drift [--seeds 100] [--shift-seeds 30] [--detections 25000]
"""

from __future__ import annotations

import time

import click
import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests import ks_stat_test, psi_stat_test, wasserstein_stat_test
from evidently.legacy.core import ColumnType

from app.drift.monitors import DriftConfig, DriftMonitor
from fleet.spec.manifest import ConfidenceHistogram

EDGES = [round(0.05 * i, 2) for i in range(21)]
CLASSES = 80
REFERENCE_SIZE = 20_000  # over scipy's 10,000 limit for exact KS p-values: Evidently's KS runs asymptotic
KAPPA = 10.0  # Beta concentration
CONFIDENCE_KINDS = ("psi", "ks", "detection_entropy")
CHECK_EVERY_FRAMES = 10
REFERENCE_EVERY = 100  # detections between two reference checks in the shift runs
REFERENCE_EVERY_NO_SHIFT = 500  # and in the no-shift runs (scipy's exact KS costs 20 ms a call)
SHIFTS = [  # (name, mean after, concentration after)
    ("mean 0.75 -> 0.74", 0.74, KAPPA),
    ("mean 0.75 -> 0.73", 0.73, KAPPA),
    ("mean 0.75 -> 0.72", 0.72, KAPPA),
    ("mean 0.75 -> 0.70", 0.70, KAPPA),
    ("mean 0.75 -> 0.65", 0.65, KAPPA),
    ("mean 0.75 -> 0.60", 0.60, KAPPA),
    ("spread kappa 10 -> 6", 0.75, 6.0),
]


def scores(rng: np.random.Generator, n: int, mean: float, kappa: float) -> np.ndarray:
    return np.clip(rng.beta(kappa * mean, kappa * (1 - mean), n), 0.0, 0.999)


def class_mix() -> np.ndarray:
    w = 1.0 / np.arange(1, CLASSES + 1) ** 1.2
    return w / w.sum()


def run_stream(seed: int, total: int, warmup: int, mean: float, kappa: float, alpha: float | None,
               reference_values: np.ndarray, reference: ConfidenceHistogram, reference_every: int) -> dict:
    """First alarm (detections after `warmup`, or None) of ours per kind and of each reference test."""
    rng = np.random.default_rng(seed)
    cfg = DriftConfig() if alpha is None else DriftConfig(false_alarm_rate=alpha)
    first: dict[str, int | None] = {}
    seen = [0]

    def on_drift(kind, value, threshold):
        first.setdefault(kind, seen[0] - warmup)

    mon = DriftMonitor(reference, CLASSES, cfg, on_drift=on_drift)
    window = cfg.window
    alpha_ref = getattr(mon, "false_alarm_rate", 1e-4)  # the same budget for the exact KS test
    ref = pd.Series(reference_values)
    ks_names = ("evidently ks p<0.05", f"evidently ks p<{alpha_ref:g}")
    tests = {"evidently wasserstein (default)": wasserstein_stat_test, "evidently psi": psi_stat_test}
    buf = np.zeros(warmup + total)
    mix = class_mix()
    frame = 0
    next_ref = reference_every
    while seen[0] < warmup + total:
        n = int(rng.integers(1, 6))
        shifted = seen[0] >= warmup
        s = scores(rng, n, mean if shifted else 0.75, kappa if shifted else KAPPA)
        mon.observe_frame(s, rng.choice(CLASSES, n, p=mix))
        end = min(seen[0] + n, len(buf))
        buf[seen[0]:end] = s[: end - seen[0]]
        seen[0] = end
        frame += 1
        if frame % CHECK_EVERY_FRAMES == 0:
            mon.check()
        if reference_every and seen[0] >= next_ref:
            next_ref += reference_every
            if seen[0] >= cfg.min_samples:
                cur = pd.Series(buf[max(0, seen[0] - window):seen[0]])
                for name, test in tests.items():
                    if name not in first and test(ref, cur, ColumnType.Numerical, None).drifted:
                        first[name] = seen[0] - warmup
                if ks_names[1] not in first:  # one exact KS test, read at both levels
                    p_value = ks_stat_test(ref, cur, ColumnType.Numerical, None).drift_score
                    for name, level in zip(ks_names, (0.05, alpha_ref), strict=True):
                        if name not in first and p_value < level:
                            first[name] = seen[0] - warmup
        if shifted and warmup and all(k in first for k in ((*tests, *ks_names) if reference_every else ())) \
                and "confidence" in first:
            break
        if any(k in first for k in CONFIDENCE_KINDS):
            first.setdefault("confidence", min(first[k] for k in CONFIDENCE_KINDS if k in first))
    return first


def corrections(seed: int, rate: float, reviews: int) -> int | None:
    """Reviews until the correction-rate alarm (None: none within `reviews`)."""
    rng = np.random.default_rng(seed)
    ref = ConfidenceHistogram(edges=EDGES, counts=[1] * 20)
    fired: list[int] = []
    mon = DriftMonitor(ref, 1, DriftConfig(), on_drift=lambda k, *a: fired.append(k))
    done = 0
    while done < reviews and "correction_rate" not in fired:
        n = int(rng.integers(1, 6))
        mon.observe_review(n, int(rng.binomial(n, rate)))
        done += n
        mon.check()
    return done if "correction_rate" in fired else None


def median(values: list[int]) -> float | None:
    return float(np.median(values)) if values else None


@click.command()
@click.option("--seeds", default=100, show_default=True, help="seeds of the no-shift false-alarm run")
@click.option("--shift-seeds", default=20, show_default=True, help="seeds per graded shift")
@click.option("--detections", default=25_000, show_default=True)
@click.option("--alpha", type=float, default=None, help="per-check false-alarm rate (default: the monitor's)")
@click.option("--ours-only", is_flag=True, help="skip Evidently (e.g. to measure an older monitor)")
def main(seeds: int, shift_seeds: int, detections: int, alpha: float | None, ours_only: bool) -> None:
    rng = np.random.default_rng(12345)
    reference_values = scores(rng, REFERENCE_SIZE, 0.75, KAPPA)
    counts, _ = np.histogram(reference_values, bins=EDGES)
    reference = ConfidenceHistogram(edges=EDGES, counts=counts.tolist())
    t0 = time.perf_counter()

    print(f"no shift: {seeds} seeds x {detections} detections, share of seeds with a false alarm")
    false_alarms: dict[str, int] = {}
    for seed in range(seeds):
        first = run_stream(seed, detections, 0, 0.75, KAPPA, alpha, reference_values, reference,
                           0 if ours_only else REFERENCE_EVERY_NO_SHIFT)
        for kind in first:
            false_alarms[kind] = false_alarms.get(kind, 0) + 1
        ours = [k for k in first if not k.startswith("evidently")]
        if ours:
            false_alarms["ours, any"] = false_alarms.get("ours, any", 0) + 1
    for kind in sorted(false_alarms, key=lambda k: (k.startswith("evidently"), k)):
        print(f"  {kind:34s} {false_alarms[kind]:3d}/{seeds} = {100 * false_alarms[kind] / seeds:.1f} %")
    if not false_alarms:
        print("  none")

    warmup = 5000
    print(f"\ngraded shifts after {warmup} unshifted detections: median detections until the alarm "
          "(detected seeds/seeds without an alarm before the shift); ratio = ours (any confidence alarm) / reference")
    for name, mean, kappa in SHIFTS:
        delays: dict[str, list[int]] = {}
        early: dict[str, int] = {}  # seeds a method alarmed on before the shift: no detection to time there
        for seed in range(shift_seeds):
            first = run_stream(10_000 + seed, detections, warmup, mean, kappa, alpha, reference_values, reference,
                               0 if ours_only else REFERENCE_EVERY)
            for kind, d in first.items():
                if d < 0:
                    early[kind] = early.get(kind, 0) + 1
                else:
                    delays.setdefault(kind, []).append(d)

        def share(kind: str, delays=delays, early=early) -> tuple[int, int]:
            return len(delays.get(kind, [])), shift_seeds - early.get(kind, 0)

        ours = median(delays.get("confidence", []))
        cells = [f"{kind} {median(delays.get(kind, []))} ({'/'.join(map(str, share(kind)))})"
                 for kind in ("confidence", *CONFIDENCE_KINDS)]
        print(f"  {name}: ours " + ", ".join(cells))
        for kind in sorted(k for k in delays if k.startswith("evidently")):
            ref = median(delays[kind])
            ratio = "" if ours is None or ref is None else f" ratio {ours / ref:.2f}"
            verdict = ""
            (hit, of), (our_hit, our_of) = share(kind), share("confidence")
            if false_alarms.get(kind, 0) > 0.01 * seeds:
                verdict = f" (not comparable: false-alarms in {100 * false_alarms[kind] / seeds:.0f} % of seeds)"
            elif hit >= of / 2:
                ok = ours is not None and ours <= ref and our_hit / max(our_of, 1) >= hit / max(of, 1)
                verdict = " ours earlier or equal" if ok else " REFERENCE EARLIER"
            print(f"    {kind:34s} {ref} ({hit}/{of}){ratio}{verdict}")

    fa = sum(corrections(s, 0.10, 1000) is not None for s in range(seeds))
    hits = [d for s in range(seeds) if (d := corrections(1000 + s, 0.35, 2000)) is not None]
    print(f"\ncorrection rate (threshold 0.2): true 10 %: {fa}/{seeds} seeds false-alarm within 1,000 reviews; "
          f"true 35 %: {len(hits)}/{seeds} alarm, median {median(hits)} reviews")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
