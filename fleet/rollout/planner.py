"""The pure planner: plan(desired, observed, analysis, now) -> actions. No I/O, no clock of its own.

One call is one reconcile decision. With analysis=None it stops at the first stage whose soak is over
and returns NeedAnalysis; the controller runs the analysis and plans again with the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from fleet.rollout.analysis import AnalysisRequest, AnalysisResult
from fleet.rollout.model import (
    AdoptPins,
    Device,
    ForgetPins,
    Note,
    Observed,
    PinDevices,
    PinFleet,
    RecordAnalysis,
    Release,
    UnpinDevices,
    Wait,
    WriteState,
)
from fleet.rollout.selection import CanaryMissing, stage_members, stages
from fleet.rollout.state import ACTIVE, RolloutState, iso, read_pins, read_state
from fleet.spec.fleetspec import APP_TAG, MODEL_TAG, FleetSpec, RolloutPolicy
from fleet.spec.manifest import ModelManifest


class PlanRefused(ValueError):
    """The fleet file cannot be acted on (no such release, a failed build, ...): a clear error, never a guess."""


@dataclass(frozen=True)
class NeedAnalysis:
    request: AnalysisRequest


@dataclass(frozen=True)
class Desired:
    """What the fleet file asks for, with the manifests resolved to their release-tag form."""

    slug: str
    app: str
    models: tuple[str, ...]  # name@version, sorted
    commit: str | None
    policy: RolloutPolicy

    @classmethod
    def from_spec(cls, spec: FleetSpec, manifests: dict[str, ModelManifest]) -> Desired:
        return cls(spec.fleet, spec.release.app, tuple(sorted(m.ref for m in manifests.values())),
                   spec.release.commit, spec.rollout)

    @property
    def tags(self) -> str:
        return f"{APP_TAG}={self.app}, {MODEL_TAG}={','.join(self.models)}"


def _model_set(value: str | None) -> tuple[str, ...]:
    return tuple(sorted(v.strip() for v in (value or "").split(",") if v.strip()))


def resolve_release(desired: Desired, observed: Observed) -> Release:
    tagged = [r for r in observed.releases
              if r.tags.get(APP_TAG) == desired.app and _model_set(r.tags.get(MODEL_TAG)) == desired.models]
    if desired.commit:
        tagged = [r for r in tagged if r.commit.startswith(desired.commit)]
    where = f"fleet {observed.slug}"
    if not tagged:
        known = [f"{r.short} ({r.tags.get(APP_TAG)}; {r.tags.get(MODEL_TAG)}; {r.status})"
                 for r in observed.releases if APP_TAG in r.tags][:5]
        raise PlanRefused(f"no release in {where} is tagged {desired.tags}"
                          + (f" with commit {desired.commit}" if desired.commit else "")
                          + (f"; tagged releases: {', '.join(known)}" if known else "; no release carries edgecv tags"))
    good = [r for r in tagged if r.valid]
    if not good:
        bad = ", ".join(f"{r.short} ({'invalidated' if r.is_invalidated else r.status})" for r in tagged)
        raise PlanRefused(f"the release tagged {desired.tags} in {where} did not build successfully: {bad}")
    if len(good) > 1:
        raise PlanRefused(f"{len(good)} successful releases in {where} are tagged {desired.tags}: "
                          f"{', '.join(r.commit for r in good)}; set release.commit in the fleet file to choose")
    return good[0]


def rollout_key(slug: str, release: Release) -> str:
    return f"{slug}:{release.commit}"


class View:
    """The fleet as seen by one rollout: our pins, stage members, who is ready."""

    def __init__(self, desired: Desired, observed: Observed, target: Release, state: RolloutState | None):
        self.target, self.state, self.observed = target, state, observed
        self.pins = read_pins(target.tags)
        self.logged: set[int] = set().union(*self.pins.values()) if self.pins else set()
        tid = target.id
        # A device pinned to another release that we did not pin belongs to someone else: never touched.
        self.eligible = [d for d in observed.devices if d.pinned in (None, tid) or d.id in self.logged]
        strict = state is None or state.stage == 0  # past the canary, a canary that left must not block
        self.members = stage_members(desired.policy, self.eligible, rollout_key(observed.slug, target), strict)
        self.stages = stages(desired.policy)

    def stage_set(self, index: int) -> list[Device]:
        return self.members[min(index, len(self.members) - 1)]

    def ours(self, upto: int) -> list[Device]:
        """Devices pinned to the target by us: recorded, or (a crash between pin and record) selected."""
        selected = {d.id for d in self.stage_set(upto)}
        return [d for d in self.observed.devices
                if d.pinned == self.target.id and (d.id in self.logged or d.id in selected)]

    def outside_changes(self) -> list[tuple[Device | None, str]]:
        obs, st, tid = self.observed, self.state, self.target.id
        out: list[tuple[Device | None, str]] = []
        assert st is not None
        if obs.fleet_release != st.baseline:
            out.append((None, f"fleet release changed from {obs.commit_of(st.baseline)} to "
                              f"{obs.commit_of(obs.fleet_release)} outside the controller"))
        if obs.tracks_latest:
            out.append((None, "fleet set to track the latest release outside the controller"))
        for d in obs.devices:
            if d.id in self.logged and d.pinned != tid:
                now = "to follow the fleet" if d.pinned is None else f"to {obs.commit_of(d.pinned)}"
                out.append((d, f"device {d.uuid[:7]} ({d.name}) re-pinned {now} outside the controller"))
        return out


def plan(desired: Desired, observed: Observed, analysis: AnalysisResult | None, now: datetime) -> list:
    target = resolve_release(desired, observed)
    actions: list = []
    # A rollout of a release the fleet file no longer asks for is unwound first.
    for rel in observed.releases:
        old = read_state(rel.tags) if rel.id != target.id else None
        if old and old.status in ACTIVE:
            actions += _unwind(desired, observed, rel, old, now)
    if actions:
        return actions + [Wait(f"the rollout of {target.short} starts once the previous rollout is unwound")]

    state = read_state(target.tags)
    if state is None or _moved_on_by_us(observed, target, state):
        return _start(desired, observed, target, now, previous=state)
    handler = {"running": _running, "rolling_back": _rolling_back, "completing": _completing}.get(state.status)
    if handler is None:
        return [Note(_final_note(state, target, observed))]
    try:
        view = View(desired, observed, target, state)
    except CanaryMissing as exc:
        raise PlanRefused(str(exc)) from exc
    return handler(desired, view, analysis, now)


def _final_note(state: RolloutState, target: Release, observed: Observed) -> str:
    tgt = target.short
    if state.status == "done":
        if observed.fleet_release != target.id:
            return (f"rollout of {tgt} finished, but the fleet now runs {observed.commit_of(observed.fleet_release)}"
                    " (changed outside the controller; left alone until `edgecv rollout resume`)")
        return f"fleet runs {tgt}: nothing to do"
    if state.status == "rolled_back":
        return f"rollout of {tgt} was rolled back ({state.reason}); release a fix, or `edgecv rollout resume` to retry"
    if state.status == "halted":
        return f"rollout of {tgt} is halted: {state.reason}; `edgecv rollout resume` after checking"
    if state.status == "paused":
        return f"rollout of {tgt} is paused: {state.reason}; `edgecv rollout resume` or `rollback`"
    return f"rollout of {tgt}: {state.status}"


def _moved_on_by_us(observed: Observed, target: Release, state: RolloutState) -> bool:
    """A finished rollout of the target, but the fleet runs another release because a later rollout put it
    there (the fleet file moved on, and now back): roll the target out again. A fleet moved by a person is
    left alone (see _final_note)."""
    if observed.fleet_release == target.id:
        return False
    if state.status == "superseded":
        return True
    current = observed.release(observed.fleet_release)
    theirs = read_state(current.tags) if current else None
    # ours only if that other rollout finished after this one (a person may re-pin an older release we rolled out)
    return (state.status == "done" and theirs is not None and theirs.status == "done"
            and theirs.last_change() > state.last_change())


def _start(desired: Desired, observed: Observed, target: Release, now: datetime,
           previous: RolloutState | None = None) -> list:
    if observed.fleet_release == target.id:
        return [Note(f"fleet runs {target.short}: nothing to do")] + (
            [Note("warning: the fleet tracks the latest release, so the next release reaches every device at once")]
            if observed.tracks_latest else [])
    if observed.tracks_latest:
        raise PlanRefused(f"fleet {observed.slug} tracks the latest release, so every new release reaches all devices "
                          "at once; pin the fleet to its current release (should_track_latest_release off) first")
    if observed.fleet_release is None:
        raise PlanRefused(f"fleet {observed.slug} has no release to run (nothing to roll back to)")
    state = RolloutState(rollout_id=target.commit[:12], status="running", stage=0, since=iso(now),
                         baseline=observed.fleet_release, attempt=previous.attempt + 1 if previous else 1,
                         history=previous.history if previous else ())
    state = state.moved(now, f"start canary: {observed.commit_of(observed.fleet_release)} -> {target.short}")
    try:
        view = View(desired, observed, target, state)
    except CanaryMissing as exc:
        raise PlanRefused(str(exc)) from exc
    soak = timedelta(seconds=view.stages[0].soak_s)
    return [WriteState(target.id, state, f"start rolling out {target.short} (canary)"), *_pin_stage(view, 0),
            Wait(f"canary soaking, {_left(soak)} left", now + soak)]


def _pin_stage(view: View, index: int) -> list:
    tid, out = view.target.id, []
    members = view.stage_set(index)
    adopt = [d.id for d in members if d.pinned == tid and d.id not in view.logged]
    todo = [d for d in members if d.pinned is None and d.id not in view.logged]
    online = [d.id for d in todo if d.is_online]
    if adopt:
        out.append(AdoptPins(tid, tuple(adopt)))
    if online:
        out.append(PinDevices(tid, tuple(online), view.stages[index].name))
    offline = len(todo) - len(online)
    if offline:
        out.append(Note(f"{offline} {view.stages[index].name} device(s) offline: pinned when they come back"))
    return out


def _running(desired: Desired, view: View, analysis: AnalysisResult | None, now: datetime) -> list:
    state, target, tid = view.state, view.target, view.target.id
    assert state is not None
    changes = view.outside_changes()
    if changes:
        reason = ("; ".join(msg for _, msg in changes[:3]) + (f" (+{len(changes) - 3} more)" if len(changes) > 3 else "")
                  + "; who did it is not recorded by the balena API (see the dashboard's activity)")
        halted = state.moved(now, "halted: outside change", status="halted", reason=reason,
                             changes=tuple(d.uuid if d else "fleet" for d, _ in changes))
        return [WriteState(tid, halted, "a pin changed outside the controller: halt, never fight a human"),
                *[Note(msg) for _, msg in changes]]

    stage = view.stages[state.stage]
    # `pins` (devices of this stage that came online, or a cut-short run's) go out while the stage goes on;
    # a transition replaces them (the next stage includes them; a rollback must not pin first).
    pins = _pin_stage(view, state.stage)
    others = [d for d in view.observed.devices if d.pinned not in (None, tid) and d.id not in view.logged]
    notes = [Note(f"{len(others)} device(s) pinned to other releases by someone else: left alone")] if others else []
    ends = state.since_at + timedelta(seconds=stage.soak_s)
    promoted = state.promoted_stage() == state.stage
    if now < ends and not promoted:
        return pins + notes + [Wait(f"{stage.name} soaking, {_left(ends - now)} left", ends)]

    members = view.stage_set(state.stage)
    ready = [d for d in members if d.pinned == tid and d.running == tid and d.is_online]
    allowed = int(desired.policy.max_offline * len(members) + 1e-9)
    if len(members) - len(ready) > allowed:
        return pins + notes + [Wait(f"{stage.name}: {len(members) - len(ready)} of {len(members)} device(s) offline "
                                    f"or still updating (at most {allowed} may be)")]

    member_ids = {d.id for d in members}
    baseline = tuple(d.uuid for d in view.observed.devices
                     if d.id not in member_ids and d.pinned is None and d.is_online and d.running == state.baseline)
    if analysis is None or analysis.stage != stage.name:
        return pins + notes + [NeedAnalysis(AnalysisRequest(stage.name, tuple(d.uuid for d in ready), baseline))]

    notes.append(RecordAnalysis(tid, analysis.summary()))
    verdict = analysis.verdict
    if verdict == "inconclusive" and promoted:
        verdict = "pass"
        notes.append(Note(f"{stage.name}: analysis inconclusive, accepted because the stage was promoted"))
    if verdict == "inconclusive":
        why = "; ".join(f"{c.name}: {c.detail}" for c in analysis.checks if c.verdict == "inconclusive")
        return pins + notes + [Wait(f"{stage.name}: analysis inconclusive ({why}); waiting for more data")]
    if verdict == "fail":
        why = "; ".join(f"{c.name}: {c.detail}" for c in analysis.failures())
        reason = f"{stage.name} analysis failed: {why}"
        if desired.policy.on_failure == "pause":
            paused = state.moved(now, f"paused: {stage.name} analysis failed", status="paused", reason=reason)
            return notes + [WriteState(tid, paused, reason)]
        back = state.moved(now, f"rolling back: {stage.name} analysis failed", status="rolling_back", reason=reason)
        return notes + [WriteState(tid, back, reason), *_rollback_actions(view, back, now)]
    if state.stage + 1 == len(view.stages):  # the last wave passed
        done = state.moved(now, f"{stage.name} passed: completing", status="completing")
        return notes + [WriteState(tid, done, f"{stage.name} passed: the fleet moves to {target.short}"),
                        *_complete_actions(view, done, now)]
    nxt = view.stages[state.stage + 1]
    moved = state.moved(now, f"{stage.name} passed: {nxt.name}", stage=nxt.index, since=iso(now), promoted=None)
    return notes + [WriteState(tid, moved, f"{stage.name} passed: start {nxt.name}"), *_pin_stage(view, nxt.index)]


def _rollback_actions(view: View, state: RolloutState, now: datetime) -> list:
    tid = view.target.id
    ours = view.ours(state.stage)
    stale = [i for i in view.logged if i not in {d.id for d in ours}]
    out: list = []
    if ours:
        out.append(UnpinDevices(tid, tuple(d.id for d in ours), "roll back to the fleet's release"))
    if stale:
        out.append(ForgetPins(tid, tuple(sorted(stale))))
    final = state.moved(now, "rolled back", status="rolled_back")
    return out + [WriteState(tid, final, f"rolled back to {view.observed.commit_of(state.baseline)}")]


def _rolling_back(desired: Desired, view: View, analysis: AnalysisResult | None, now: datetime) -> list:
    assert view.state is not None
    return _rollback_actions(view, view.state, now)


def _complete_actions(view: View, state: RolloutState, now: datetime) -> list:
    tid, out = view.target.id, []
    if view.observed.fleet_release != tid or view.observed.tracks_latest:
        out.append(PinFleet(tid, view.target.commit))
    ours = view.ours(state.stage)
    if ours:
        out.append(UnpinDevices(tid, tuple(d.id for d in ours), "the fleet runs the release now"))
    stale = [i for i in view.logged if i not in {d.id for d in ours}]
    if stale:
        out.append(ForgetPins(tid, tuple(sorted(stale))))
    final = state.moved(now, "done", status="done")
    return out + [WriteState(tid, final, f"fleet {view.observed.slug} runs {view.target.short}")]


def _completing(desired: Desired, view: View, analysis: AnalysisResult | None, now: datetime) -> list:
    assert view.state is not None
    return _complete_actions(view, view.state, now)


def _unwind(desired: Desired, observed: Observed, rel: Release, state: RolloutState, now: datetime) -> list:
    """The fleet file moved on while `rel` was rolling out: finish a completion, otherwise roll it back."""
    pins = read_pins(rel.tags)
    logged = set().union(*pins.values()) if pins else set()
    ours = [d.id for d in observed.devices if d.pinned == rel.id and d.id in logged]
    out: list = []
    if state.status == "completing" and observed.fleet_release != rel.id:
        out.append(PinFleet(rel.id, rel.commit))
    if ours:
        out.append(UnpinDevices(rel.id, tuple(ours), f"{rel.short} is no longer what the fleet file asks for"))
    stale = sorted(logged - set(ours))
    if stale:
        out.append(ForgetPins(rel.id, tuple(stale)))
    final = "done" if state.status == "completing" else "superseded"
    return out + [WriteState(rel.id, state.moved(now, final, status=final), f"rollout of {rel.short}: {final}")]


def _left(td: timedelta) -> str:
    s = max(0, int(td.total_seconds()))
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# ---------------------------------------------------------------- human commands


COMMANDS = ("promote", "abort", "rollback", "resume")


def plan_command(desired: Desired, observed: Observed, command: str, by: str, now: datetime) -> list:
    """`edgecv rollout promote|abort|rollback|resume`: the state change, recorded with who asked."""
    target = resolve_release(desired, observed)
    state = read_state(target.tags)
    tid = target.id
    if state is None:
        raise PlanRefused(f"no rollout of {target.short} has started in {observed.slug}")
    st = state.status
    if command == "promote":
        if st != "running":
            raise PlanRefused(f"cannot promote: the rollout is {st}")
        new = state.moved(now, f"promoted by {by}", promoted=f"{state.stage}|{by}|{iso(now)}")
        return [WriteState(tid, new, f"{by} skips the rest of the soak")]
    if command == "abort":
        if st not in ("running", "halted"):
            raise PlanRefused(f"cannot abort: the rollout is {st}")
        new = state.moved(now, f"aborted by {by}", status="paused", reason=f"aborted by {by}")
        return [WriteState(tid, new, f"{by} stops the rollout where it is")]
    if command == "rollback":
        if st not in ("running", "paused", "halted", "rolling_back"):
            raise PlanRefused(f"cannot roll back: the rollout is {st}"
                              + (" (change the fleet file to the previous release instead)" if st == "done" else ""))
        new = state.moved(now, f"rollback by {by}", status="rolling_back", reason=f"rollback by {by}")
        view = View(desired, observed, target, new)
        return [WriteState(tid, new, f"{by} rolls the rollout back"), *_rollback_actions(view, new, now)]
    if command == "resume":
        return _resume(desired, observed, target, state, by, now)
    raise PlanRefused(f"unknown command {command!r}")


def _resume(desired: Desired, observed: Observed, target: Release, state: RolloutState, by: str,
            now: datetime) -> list:
    tid = target.id
    if state.status in ("done", "superseded") and observed.fleet_release != tid:
        return _start(desired, observed, target, now, previous=state)[:1]  # the state; the next pass pins
    if state.status == "rolled_back":
        new = state.moved(now, f"retry by {by}", status="running", stage=0, since=iso(now), attempt=state.attempt + 1,
                          baseline=observed.fleet_release, reason=None, changes=(), promoted=None)
        return [WriteState(tid, new, f"{by} retries the rollout from the canary")]
    if state.status not in ("halted", "paused"):
        raise PlanRefused(f"nothing to resume: the rollout is {state.status}")
    # Devices a human re-pinned are no longer ours: forget them, and take the fleet's release as it is now.
    pins = read_pins(target.tags)
    logged = set().union(*pins.values()) if pins else set()
    taken = tuple(sorted(d.id for d in observed.devices if d.id in logged and d.pinned != tid))
    out: list = [ForgetPins(tid, taken)] if taken else []
    new = state.moved(now, f"resumed by {by}", status="running", reason=None, changes=(),
                      baseline=observed.fleet_release)
    return out + [WriteState(tid, new, f"{by} resumes" + (f"; {len(taken)} device(s) left to whoever re-pinned them"
                                                          if taken else ""))]
