"""One reconcile pass: take the fleet's lease, observe, analyse if a soak is over, plan, act, let go."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from balena import Balena

from fleet.rollout.analysis import AnalysisRequest, AnalysisResult
from fleet.rollout.executor import PIN_BATCH, Executor, FleetLease
from fleet.rollout.model import Observed, Wait
from fleet.rollout.observe import observe, read_lease
from fleet.rollout.planner import Desired, NeedAnalysis, plan, plan_command
from fleet.rollout.state import LEASE_TAG


class AnalyzerLike(Protocol):
    def run(self, req: AnalysisRequest, at: datetime) -> AnalysisResult: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def default_holder() -> str:
    who = os.environ.get("GITHUB_ACTOR") or os.environ.get("USER") or "edgecv"
    return f"{who}@{socket.gethostname()}/{uuid.uuid4().hex[:6]}"


@dataclass
class PassResult:
    observed: Observed
    actions: list
    done: list[str] = field(default_factory=list)
    analysis: AnalysisResult | None = None


class Controller:
    def __init__(self, sdk: Balena, desired: Desired, analyzer: AnalyzerLike | None = None,
                 clock: Callable[[], datetime] = utcnow, holder: str | None = None,
                 lease_ttl: timedelta = timedelta(minutes=15), batch: int = PIN_BATCH,
                 log: Callable[[str], None] = lambda line: None):
        self.sdk, self.desired, self.analyzer, self.clock = sdk, desired, analyzer, clock
        self.holder = holder or default_holder()
        self.lease_ttl, self.batch, self.log = lease_ttl, batch, log

    def observe(self) -> Observed:
        canary_tag = self.desired.policy.canary.tag
        return observe(self.sdk, self.desired.slug, [canary_tag.key] if canary_tag else [])

    def plan(self, observed: Observed | None = None) -> PassResult:
        """Read-only: what a pass would do now (running the analysis if a soak is over)."""
        observed = observed or self.observe()
        now = self.clock()
        actions = plan(self.desired, observed, None, now)
        need = next((a for a in actions if isinstance(a, NeedAnalysis)), None)
        result = None
        if need is not None:
            if self.analyzer is None:
                actions = [a if not isinstance(a, NeedAnalysis) else
                           Wait(f"{need.request.stage}: analysis due, but no Prometheus is configured") for a in actions]
            else:
                result = self.analyzer.run(need.request, now)
                actions = plan(self.desired, observed, result, now)
        return PassResult(observed, actions, analysis=result)

    def reconcile(self) -> PassResult:
        """One pass: the lease makes sure only one run acts on the fleet at a time."""
        return self._with_lease(lambda observed: self.plan(observed))

    def command(self, name: str, by: str) -> PassResult:
        return self._with_lease(lambda observed: PassResult(
            observed, plan_command(self.desired, observed, name, by, self.clock())))

    def _with_lease(self, decide: Callable[[Observed], PassResult]) -> PassResult:
        fleet_id, current = read_lease(self.sdk, self.desired.slug, LEASE_TAG)
        lease = FleetLease(self.sdk, fleet_id, self.holder, self.lease_ttl, self.clock)
        lease.acquire(current)
        try:
            observed = self.observe()  # fresh, and it tells us whether our lease write won
            lease.confirm(observed.fleet_tags.get(LEASE_TAG))
            result = decide(observed)
            executor = Executor(self.sdk, observed, lease, batch=self.batch, log=self.log)
            result.done = executor.apply(result.actions)
            return result
        finally:
            try:
                lease.release()
            except Exception as exc:  # noqa: BLE001 - the lease expires by itself; keep the pass's own error
                self.log(f"could not release the lease ({exc}); it expires in {self.lease_ttl}")
