"""Per-stage latency percentiles: the report `edgecv gates --latency` reads.

    {"stages": {"capture": {"p50_ms": 4.1, "p95_ms": 9.8}, "preprocess": {...}, ..., "total": {...}}}

Two sources: exact samples the pipeline recorded (`LatencyRecorder`, a bounded window per stage), or the
`edgecv_stage_latency_seconds` histograms scraped from a running app (`from_prometheus_text`), where the
percentile is interpolated inside its bucket as PromQL's histogram_quantile does.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import PIPELINE_STAGES

STAGE_METRIC = "edgecv_stage_latency_seconds"


class LatencyRecorder:
    """Keeps the newest `window` samples (seconds) of each stage."""

    def __init__(self, stages: tuple[str, ...] = PIPELINE_STAGES, window: int = 50_000):
        self.stages = stages
        self._samples = {s: deque(maxlen=window) for s in stages}
        self._lock = threading.Lock()

    def record(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._samples[stage].append(seconds)

    def count(self, stage: str) -> int:
        return len(self._samples[stage])

    def percentiles(self) -> dict[str, dict[str, float]]:
        """{stage: {"p50_ms", "p95_ms"}} for every stage with samples."""
        with self._lock:
            data = {s: np.fromiter(v, float) for s, v in self._samples.items() if v}
        return {
            s: {"p50_ms": round(float(np.percentile(a, 50)) * 1000, 3), "p95_ms": round(float(np.percentile(a, 95)) * 1000, 3)}
            for s, a in data.items()
        }

    def report(self) -> dict:
        return {"stages": self.percentiles()}


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """q-quantile from cumulative (upper bound, count) buckets, +Inf last; linear inside the bucket."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # beyond the last finite bucket: its bound is all we know
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def from_prometheus_text(text: str) -> dict:
    """The latency report from a /metrics page of the app."""
    per_stage: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != STAGE_METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{STAGE_METRIC}_bucket":
                le = sample.labels["le"]
                bound = math.inf if le in ("+Inf", "Inf") else float(le)
                per_stage.setdefault(sample.labels["stage"], []).append((bound, sample.value))
    stages = {}
    for stage in [s for s in PIPELINE_STAGES if s in per_stage] + sorted(set(per_stage) - set(PIPELINE_STAGES)):
        p50 = histogram_quantile(0.5, per_stage[stage])
        p95 = histogram_quantile(0.95, per_stage[stage])
        if p50 is not None and p95 is not None:
            stages[stage] = {"p50_ms": round(p50 * 1000, 3), "p95_ms": round(p95 * 1000, 3)}
    return {"stages": stages}


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
