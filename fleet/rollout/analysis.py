"""The analysis at the end of a soak: PromQL checks on the upgraded devices against the baseline.

Devices are told apart by a `device` label holding the balena device uuid, which the scrape (target
labels / relabelling) or the device's remote-write (external_labels) adds to every series. The baseline
is the devices still on the previous release. Too little data is "inconclusive" (the rollout waits), never
"pass": a check that compares with the baseline is inconclusive when the baseline devices have no data; the
ratio is skipped only when there are no baseline devices at all (the last wave: every device is upgraded).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from datetime import datetime
from string import Template

from fleet.promql import PrometheusClient, PromQLError
from fleet.spec.durations import format_duration
from fleet.spec.fleetspec import Analysis, Check
from fleet.spec.manifest import ModelManifest


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"  # too little data: the rollout waits, never passes
    SKIPPED = "skipped"

    @property
    def final(self) -> bool:
        """A verdict the rollout acts on (inconclusive waits for more data)."""
        return self in (Verdict.PASS, Verdict.FAIL)


VERDICTS = (Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE)


@dataclass(frozen=True)
class AnalysisRequest:
    stage: str
    devices: tuple[str, ...]  # uuids of upgraded, ready devices
    baseline: tuple[str, ...]  # uuids of online devices on the previous release


@dataclass(frozen=True)
class CheckResult:
    name: str
    verdict: Verdict
    value: float | None
    baseline: float | None
    samples: float | None
    detail: str


@dataclass(frozen=True)
class AnalysisResult:
    stage: str
    verdict: Verdict
    checks: tuple[CheckResult, ...]
    at: datetime
    devices: int = 0
    baseline_devices: int = 0

    def summary(self) -> str:
        return json.dumps({"stage": self.stage, "verdict": self.verdict, "at": self.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "devices": self.devices, "baseline": self.baseline_devices,
                           "checks": {c.name: f"{c.verdict}: {c.detail}" for c in self.checks}},
                          separators=(",", ":"))

    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.verdict == Verdict.FAIL]


def combine(checks: list[CheckResult]) -> Verdict:
    verdicts = {c.verdict for c in checks}
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    return Verdict.INCONCLUSIVE if Verdict.INCONCLUSIVE in verdicts else Verdict.PASS


def budget_ms(manifests: list[ModelManifest], stage: str) -> float:
    """The strictest budget among the release's models."""
    return min(m.latency_budget_ms.as_dict()[stage] for m in manifests)


def device_regex(uuids: tuple[str, ...]) -> str:
    return "|".join(re.escape(u) for u in sorted(uuids))


# The rollout's name for the shared client (fleet.rollout.cli and the tests construct it by this name).
Prometheus = PrometheusClient


NO_BASELINE = "no baseline data"


class Analyzer:
    def __init__(self, prometheus: PrometheusClient, analysis: Analysis, manifests: list[ModelManifest]):
        self.prom, self.analysis, self.manifests = prometheus, analysis, manifests

    def run(self, req: AnalysisRequest, at: datetime) -> AnalysisResult:
        """at: when the analysis is taken (the planner's now); queries are evaluated at Prometheus' now."""
        checks = []
        for check in self.analysis.checks:
            try:
                checks.append(self._check(check, req))
            except PromQLError as exc:
                checks.append(CheckResult(check.name, Verdict.INCONCLUSIVE, None, None, None, str(exc)[:200]))
        return AnalysisResult(req.stage, combine(checks), tuple(checks), at, len(req.devices), len(req.baseline))

    def _query(self, template: str, uuids: tuple[str, ...]) -> float | None:
        window = format_duration(self.analysis.window)
        return self.prom.scalar(Template(template).safe_substitute(devices=device_regex(uuids), window=window))

    def _check(self, check: Check, req: AnalysisRequest) -> CheckResult:
        min_samples = check.min_samples if check.min_samples is not None else self.analysis.min_samples
        if not req.devices:
            return CheckResult(check.name, Verdict.INCONCLUSIVE, None, None, None, "no upgraded device ready")
        samples = self._query(check.samples, req.devices) if check.samples else None
        if check.samples and (samples or 0) < min_samples:
            return CheckResult(check.name, Verdict.INCONCLUSIVE, None, None, samples,
                               f"{samples or 0:.0f} samples < {min_samples}")
        value = self._query(check.query, req.devices)
        if value is None:
            if check.no_data == "inconclusive":
                return CheckResult(check.name, Verdict.INCONCLUSIVE, None, None, samples, "no data")
            value = 0.0
        base = self._baseline(check, req, min_samples)
        problems, notes = self._thresholds(check, value, base, bool(req.baseline))
        if problems:
            verdict = Verdict.FAIL
        elif any(n.startswith(NO_BASELINE) for n in notes):
            verdict = Verdict.INCONCLUSIVE  # a regression must not pass because the baseline is silent
        else:
            verdict = Verdict.PASS
        detail = "; ".join(problems or notes) or f"{value:.4g}"
        return CheckResult(check.name, verdict, value, base, samples, detail)

    def _baseline(self, check: Check, req: AnalysisRequest, min_samples: int) -> float | None:
        if check.max_vs_baseline is None and check.min_vs_baseline is None or not req.baseline:
            return None
        if check.samples and (self._query(check.samples, req.baseline) or 0) < min_samples:
            return None
        return self._query(check.query, req.baseline)

    def _thresholds(self, check: Check, value: float, base: float | None,
                    has_baseline: bool) -> tuple[list[str], list[str]]:
        problems, notes = [], []
        limit = check.max
        if isinstance(limit, str):
            limit = budget_ms(self.manifests, limit.removeprefix("budget."))
        if limit is not None:
            (problems if value > limit else notes).append(f"{value:.4g} {'>' if value > limit else '<='} {limit:.4g}")
        if check.min is not None:
            (problems if value < check.min else notes).append(
                f"{value:.4g} {'<' if value < check.min else '>='} {check.min:.4g}")
        for factor, worse in ((check.max_vs_baseline, lambda v, b: v > b), (check.min_vs_baseline, lambda v, b: v < b)):
            if factor is None:
                continue
            if base is None:
                notes.append(f"{NO_BASELINE}: the baseline devices report too few samples" if has_baseline
                             else "no baseline devices (the whole fleet is upgraded): ratio skipped")
                continue
            bound = base * factor
            bad = worse(value, bound)
            (problems if bad else notes).append(f"{value:.4g} vs baseline {base:.4g} x {factor:g}"
                                                + (" (worse)" if bad else ""))
        return problems, notes
