"""The pure planner: plan(desired, observed, analysis, now) -> actions. No I/O, no clock of its own.

One call is one reconcile decision. With analysis=None it stops at the first stage whose soak is over
and returns NeedAnalysis; the controller runs the analysis and plans again with the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from fleet.rollout.analysis import AnalysisRequest, AnalysisResult, Verdict
from fleet.rollout.model import (
    AdoptPins,
    Device,
    DisownDevices,
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
from fleet.rollout.state import (
    STATE_TAG,
    RolloutState,
    Status,
    encode_ids,
    iso,
    read_intents,
    read_pins,
    read_state,
    read_theirs,
)
from fleet.spec.fleetspec import APP_TAG, MODEL_TAG, Analysis, FleetSpec, RolloutPolicy, release_tags, tags_match
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
    analysis: Analysis = field(default_factory=Analysis)  # the gates each stage must pass

    @classmethod
    def from_spec(cls, spec: FleetSpec, manifests: dict[str, ModelManifest]) -> Desired:
        return cls(spec.fleet, spec.release.app, tuple(sorted(m.ref for m in manifests.values())),
                   spec.release.commit, spec.rollout, spec.analysis)

    @property
    def tags(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in release_tags(self.app, self.models).items())


def resolve_release(desired: Desired, observed: Observed, unusable_ok: bool = False) -> Release:
    """The release the fleet file asks for. `unusable_ok`: an invalidated or failed one is returned when a
    rollout of it was started (it must stay possible to unwind it)."""
    wanted = release_tags(desired.app, desired.models)  # the build's tags (edgecv release tags)
    tagged = [r for r in observed.releases if tags_match(r.tags, wanted)]
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
        started = [r for r in tagged if STATE_TAG in r.tags]
        if unusable_ok and started:
            return max(started, key=lambda r: r.id)
        bad = ", ".join(f"{r.short} ({'invalidated' if r.is_invalidated else r.status})" for r in tagged)
        raise PlanRefused(f"the release tagged {desired.tags} in {where} did not build successfully: {bad}")
    if len(good) > 1:
        raise PlanRefused(f"{len(good)} successful releases in {where} are tagged {desired.tags}: "
                          f"{', '.join(r.commit for r in good)}; set release.commit in the fleet file to choose")
    return good[0]


def unusable(release: Release) -> str:
    return "invalidated" if release.is_invalidated else f"build {release.status}"


def settle_intents(observed: Observed) -> tuple[list, Observed]:
    """Intent records left by a run cut short between writing them and confirming them: the devices it did
    pin (pinned to that release now) are ours, the others it never pinned. Returns the AdoptPins that
    confirm the records and the fleet as it looks once they are confirmed."""
    actions: list = []
    releases = []
    for rel in observed.releases:
        intents = read_intents(rel.tags)
        if not intents:
            releases.append(rel)
            continue
        tags = dict(rel.tags)
        for key, ids in sorted(intents.items()):
            got = tuple(sorted(d.id for d in observed.devices if d.id in ids and d.pinned == rel.id))
            actions.append(AdoptPins(rel.id, key, got))
            if got:
                tags[key] = encode_ids(got)
            else:
                del tags[key]
        releases.append(replace(rel, tags=tags))
    return actions, replace(observed, releases=tuple(releases))


def rollout_key(slug: str, release: Release) -> str:
    return f"{slug}:{release.commit}"


class View:
    """The fleet as seen by one rollout: our pins, stage members, who is ready."""

    def __init__(self, desired: Desired, observed: Observed, target: Release, state: RolloutState | None):
        self.target, self.state, self.observed = target, state, observed
        self.pins = read_pins(target.tags)
        self.logged: set[int] = set().union(*self.pins.values()) if self.pins else set()
        self.theirs = read_theirs(target.tags)
        # Ours to move: devices following the fleet, and those we pinned. A device pinned by someone else
        # (to any release, the target included) or handed to a person on `resume` is never touched.
        self.eligible = [d for d in observed.devices
                         if d.id not in self.theirs and (d.pinned is None or d.id in self.logged)]
        strict = state is None or state.stage == 0  # past the canary, a canary that left must not block
        self.members = stage_members(desired.policy, self.eligible, rollout_key(observed.slug, target), strict,
                                     state.canary if state else ())
        self.stages = stages(desired.policy)

    def stage_set(self, index: int) -> list[Device]:
        return self.members[min(index, len(self.members) - 1)]

    def ours(self) -> list[Device]:
        """Devices pinned to the target by us (recorded; an interrupted run's intent is settled first)."""
        return [d for d in self.observed.devices if d.pinned == self.target.id and d.id in self.logged]

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


def summarise(messages: list[str], what: str, first: int = 3) -> str:
    """A count and the first few: a halt over 10,000 devices stays one line."""
    more = len(messages) - first
    return f"{len(messages)} {what}: " + "; ".join(messages[:first]) + (f" (+{more} more)" if more > 0 else "")


def plan(desired: Desired, observed: Observed, analysis: AnalysisResult | None, now: datetime) -> list:
    settled, observed = settle_intents(observed)
    try:
        target: Release | None = resolve_release(desired, observed, unusable_ok=True)
        refused = None
    except PlanRefused as exc:
        target, refused = None, exc
    # A rollout of a release the fleet file no longer asks for is unwound first - also while the new
    # release is missing, failed or still building (else its failing canary would stay pinned meanwhile).
    unwind: list = []
    for rel in observed.releases:
        old = read_state(rel.tags) if target is None or rel.id != target.id else None
        if old and not old.status.final:
            unwind += _unwind(desired, observed, rel, old, now)
    if refused is not None:
        if not (settled or unwind):
            raise refused
        return settled + unwind + [Note(f"refused: {refused}")]
    assert target is not None
    if unwind:
        return settled + unwind + [Wait(f"the rollout of {target.short} starts once the previous rollout is unwound")]

    state = read_state(target.tags)
    if not target.valid:
        return settled + _unusable_target(desired, observed, target, state, now)
    if state is None or _moved_on_by_us(observed, target, state):
        return settled + _start(desired, observed, target, now, previous=state)
    handler = {Status.RUNNING: _running, Status.ROLLING_BACK: _rolling_back,
               Status.COMPLETING: _completing}.get(state.status)
    if handler is None:
        return settled + [Note(_final_note(state, target, observed))]
    try:
        view = View(desired, observed, target, state)
    except CanaryMissing as exc:
        raise PlanRefused(str(exc)) from exc
    return settled + handler(desired, view, analysis, now)


def _unusable_target(desired: Desired, observed: Observed, target: Release, state: RolloutState | None,
                     now: datetime) -> list:
    """The target was invalidated (or its build failed) after its rollout started: unwinding must never
    depend on the target still resolving. Roll back what we pinned; never start anything."""
    why = f"release {target.short} is {unusable(target)}"
    if state is None:
        raise PlanRefused(f"the release tagged {desired.tags} in fleet {observed.slug} did not build successfully: "
                          f"{target.short} ({unusable(target)})")
    if state.status.final:
        return [Note(f"rollout of {target.short}: {state.status} ({state.reason or why}); {why}: "
                     "point the fleet file at another release")]
    view = View(desired, observed, target, state)
    if state.status != Status.ROLLING_BACK:
        state = state.moved(now, f"rolling back: {why}", status=Status.ROLLING_BACK, reason=why)
        return [WriteState(target.id, state, f"{why}: roll back"), *_rollback_actions(view, state, now)]
    return _rollback_actions(view, state, now)


def _final_note(state: RolloutState, target: Release, observed: Observed) -> str:
    tgt = target.short
    match state.status:
        case Status.DONE if observed.fleet_release != target.id:
            return (f"rollout of {tgt} finished, but the fleet now runs {observed.commit_of(observed.fleet_release)}"
                    " (changed outside the controller; left alone until `edgecv rollout resume`)")
        case Status.DONE:
            return f"fleet runs {tgt}: nothing to do"
        case Status.ROLLED_BACK:
            return f"rollout of {tgt} was rolled back ({state.reason}); release a fix, or `edgecv rollout resume` to retry"
        case Status.HALTED:
            return f"rollout of {tgt} is halted: {state.reason}; `edgecv rollout resume` after checking"
        case Status.PAUSED:
            return f"rollout of {tgt} is paused: {state.reason}; `edgecv rollout resume`, `promote` or `rollback`"
    return f"rollout of {tgt}: {state.status}"


def _moved_on_by_us(observed: Observed, target: Release, state: RolloutState) -> bool:
    """A finished rollout of the target, but the fleet runs another release because a later rollout put it
    there (the fleet file moved on, and now back): roll the target out again. A fleet moved by a person is
    left alone (see _final_note)."""
    if observed.fleet_release == target.id:
        return False
    if state.status == Status.SUPERSEDED:
        return True
    current = observed.release(observed.fleet_release)
    theirs = read_state(current.tags) if current else None
    # ours only if that other rollout finished after this one (a person may re-pin an older release we rolled out)
    return (state.status == Status.DONE and theirs is not None and theirs.status == Status.DONE
            and theirs.last_change() > state.last_change())


def _with_canary(desired: Desired, observed: Observed, target: Release, state: RolloutState) -> RolloutState:
    """Choose the canary once, when the rollout (or a retry) starts, and record it in the state."""
    try:
        view = View(desired, observed, target, replace(state, canary=()))
    except CanaryMissing as exc:
        raise PlanRefused(str(exc)) from exc
    return replace(state, canary=tuple(d.id for d in view.members[0]))


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
    state = RolloutState(rollout_id=target.commit[:12], status=Status.RUNNING, stage=0, since=iso(now),
                         baseline=observed.fleet_release, attempt=previous.attempt + 1 if previous else 1,
                         history=previous.history if previous else ())
    state = state.moved(now, f"start canary: {observed.commit_of(observed.fleet_release)} -> {target.short}")
    state = _with_canary(desired, observed, target, state)
    view = View(desired, observed, target, state)
    soak = timedelta(seconds=view.stages[0].soak_s)
    return [WriteState(target.id, state, f"start rolling out {target.short} (canary)"), *_pin_stage(view, 0),
            Wait(f"canary soaking, {_left(soak)} left once its devices run {target.short}", now + soak)]


def _pin_stage(view: View, index: int) -> list:
    tid, out = view.target.id, []
    todo = [d for d in view.stage_set(index) if d.pinned is None and d.id not in view.logged]
    online = [d.id for d in todo if d.reachable]
    if online:
        out.append(PinDevices(tid, tuple(online), view.stages[index].name))
    offline = len(todo) - len(online)
    if offline:
        out.append(Note(f"{offline} {view.stages[index].name} device(s) offline: pinned when they come back"))
    return out


def _failure(desired: Desired, view: View, notes: list, reason: str, event: str, now: datetime) -> list:
    """A stage failed (its analysis, or devices that cannot run the release): pause or roll back."""
    state, tid = view.state, view.target.id
    assert state is not None
    if desired.policy.on_failure == "pause":
        paused = state.moved(now, f"paused: {event}", status=Status.PAUSED, reason=reason)
        return notes + [WriteState(tid, paused, reason)]
    back = state.moved(now, f"rolling back: {event}", status=Status.ROLLING_BACK, reason=reason)
    return notes + [WriteState(tid, back, reason), *_rollback_actions(view, back, now)]


def _running(desired: Desired, view: View, analysis: AnalysisResult | None, now: datetime) -> list:
    state, target, tid = view.state, view.target, view.target.id
    assert state is not None
    changes = view.outside_changes()
    if changes:
        msgs = [msg for _, msg in changes]
        reason = (summarise(msgs, "change(s) outside the controller")
                  + "; who did it is not recorded by the balena API (see the dashboard's activity)")
        halted = state.moved(now, "halted: outside change", status=Status.HALTED, reason=reason,
                             changes=tuple(d.uuid if d else "fleet" for d, _ in changes)[:50])
        devices = [msg for d, msg in changes if d is not None]
        fleet = [Note(msg) for d, msg in changes if d is None]
        return [WriteState(tid, halted, "a pin changed outside the controller: halt, never fight a human"), *fleet,
                *([Note(summarise(devices, "device(s) re-pinned outside the controller"))] if devices else [])]

    stage = view.stages[state.stage]
    # `pins` (devices of this stage that came online, or a cut-short run's) go out while the stage goes on;
    # a transition replaces them (the next stage includes them; a rollback must not pin first).
    pins = _pin_stage(view, state.stage)
    others = [d for d in view.observed.devices
              if d.id not in view.logged and (d.pinned is not None or d.id in view.theirs)]
    notes: list = [Note(f"{len(others)} device(s) pinned or taken over by someone else: left alone")] if others else []
    members = view.stage_set(state.stage)
    allowed = int(desired.policy.max_offline * len(members) + 1e-9)
    failed = [d for d in members if d.pinned == tid and d.running != tid and d.update_failed]
    if len(failed) > allowed:
        shown = [f"{d.name} ({d.update_status})" for d in failed]
        reason = summarise(shown, f"of {len(members)} {stage.name} device(s) could not run {target.short}")
        return _failure(desired, view, notes, reason, f"{stage.name} devices failed to update", now)

    ready = [d for d in members if d.pinned == tid and d.running == tid and d.reachable]
    promoted = state.promoted_stage() == state.stage
    if state.ready_at is None and len(members) - len(ready) <= allowed:  # the soak starts now
        state = state.moved(now, f"{stage.name}: {len(ready)} of {len(members)} device(s) run {target.short}",
                            ready_at=iso(now))
        notes.append(WriteState(tid, state, f"{stage.name} runs {target.short}: its soak starts"))
    if state.ready_at is None and not promoted:
        deadline = state.since_at + timedelta(seconds=2 * stage.soak_s + 3600)
        waiting = f"{len(members) - len(ready)} of {len(members)} device(s) offline or still updating"
        if now >= deadline:
            reason = (f"{stage.name}: {waiting} since {state.since} (at most {allowed} may be); "
                      f"`edgecv rollout promote` to go on with the {len(ready)} that run it, or `rollback`")
            paused = state.moved(now, f"paused: {stage.name} devices never updated", status=Status.PAUSED,
                                 reason=reason)
            return pins + notes + [WriteState(tid, paused, reason)]
        return pins + notes + [Wait(f"{stage.name}: {waiting} (at most {allowed} may be); the soak starts once "
                                    f"they run {target.short}", deadline)]
    start = parse_time(state.ready_at) if state.ready_at else now
    ends = start + timedelta(seconds=stage.soak_s)
    if now < ends and not promoted:
        return pins + notes + [Wait(f"{stage.name} soaking, {_left(ends - now)} left", ends)]

    member_ids = {d.id for d in members}
    baseline = tuple(d.uuid for d in view.observed.devices
                     if d.id not in member_ids and d.pinned is None and d.reachable and d.running == state.baseline)
    if analysis is None or analysis.stage != stage.name:
        return pins + notes + [NeedAnalysis(AnalysisRequest(stage.name, tuple(d.uuid for d in ready), baseline))]

    notes.append(RecordAnalysis(tid, analysis.summary()))
    verdict = analysis.verdict
    if verdict == Verdict.INCONCLUSIVE and promoted:
        verdict = Verdict.PASS
        notes.append(Note(f"{stage.name}: analysis inconclusive, accepted because the stage was promoted"))
    if verdict == Verdict.INCONCLUSIVE:
        why = "; ".join(f"{c.name}: {c.detail}" for c in analysis.checks if c.verdict == Verdict.INCONCLUSIVE)
        return pins + notes + [Wait(f"{stage.name}: analysis inconclusive ({why}); waiting for more data")]
    if verdict == Verdict.FAIL:
        why = "; ".join(f"{c.name}: {c.detail}" for c in analysis.failures())
        return _failure(desired, view, notes, f"{stage.name} analysis failed: {why}",
                        f"{stage.name} analysis failed", now)
    if state.stage + 1 == len(view.stages):  # the last wave passed
        done = state.moved(now, f"{stage.name} passed: completing", status=Status.COMPLETING)
        return notes + [WriteState(tid, done, f"{stage.name} passed: the fleet moves to {target.short}"),
                        *_complete_actions(view, done, now)]
    nxt = view.stages[state.stage + 1]
    moved = state.moved(now, f"{stage.name} passed: {nxt.name}", stage=nxt.index, since=iso(now), promoted=None,
                        ready_at=None)
    return notes + [WriteState(tid, moved, f"{stage.name} passed: start {nxt.name}"), *_pin_stage(view, nxt.index)]


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _rollback_actions(view: View, state: RolloutState, now: datetime) -> list:
    tid, obs = view.target.id, view.observed
    ours = view.ours()
    stale = [i for i in view.logged if i not in {d.id for d in ours}]
    out: list = []
    back = obs.commit_of(obs.fleet_release)  # what unpinned devices follow: the fleet's release *now*
    if ours:
        out.append(UnpinDevices(tid, tuple(d.id for d in ours), f"roll back: they follow the fleet's release {back}"))
    if stale:
        out.append(ForgetPins(tid, tuple(sorted(stale))))
    moved = "" if obs.fleet_release == state.baseline else (
        f" (the rollout started from {obs.commit_of(state.baseline)}; the fleet was re-pinned outside the controller)")
    final = state.moved(now, f"rolled back to the fleet's release {back}", status=Status.ROLLED_BACK)
    return out + [WriteState(tid, final, f"rolled back: {len(ours)} device(s) follow the fleet's release {back}{moved}")]


def _rolling_back(desired: Desired, view: View, analysis: AnalysisResult | None, now: datetime) -> list:
    assert view.state is not None
    return _rollback_actions(view, view.state, now)


def _complete_actions(view: View, state: RolloutState, now: datetime) -> list:
    tid, out = view.target.id, []
    if view.observed.fleet_release != tid or view.observed.tracks_latest:
        out.append(PinFleet(tid, view.target.commit))
    ours = view.ours()
    if ours:
        out.append(UnpinDevices(tid, tuple(d.id for d in ours), "the fleet runs the release now"))
    stale = [i for i in view.logged if i not in {d.id for d in ours}]
    if stale:
        out.append(ForgetPins(tid, tuple(sorted(stale))))
    final = state.moved(now, "done", status=Status.DONE)
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
    completing = state.status == Status.COMPLETING and rel.valid
    if completing and observed.fleet_release != rel.id:
        out.append(PinFleet(rel.id, rel.commit))
    if ours:
        out.append(UnpinDevices(rel.id, tuple(ours), f"{rel.short} is no longer what the fleet file asks for"))
    stale = sorted(logged - set(ours))
    if stale:
        out.append(ForgetPins(rel.id, tuple(stale)))
    final = Status.DONE if completing else Status.SUPERSEDED
    return out + [WriteState(rel.id, state.moved(now, final, status=final), f"rollout of {rel.short}: {final}")]


def _left(td: timedelta) -> str:
    s = max(0, int(td.total_seconds()))
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# ---------------------------------------------------------------- human commands


COMMANDS = ("promote", "abort", "rollback", "resume")


def plan_command(desired: Desired, observed: Observed, command: str, by: str, now: datetime) -> list:
    """`edgecv rollout promote|abort|rollback|resume`: the state change, recorded with who asked."""
    settled, observed = settle_intents(observed)
    target = resolve_release(desired, observed, unusable_ok=True)
    state = read_state(target.tags)
    tid = target.id
    if state is None:
        raise PlanRefused(f"no rollout of {target.short} has started in {observed.slug}")
    st = state.status
    if not target.valid and command in ("promote", "resume"):
        raise PlanRefused(f"cannot {command}: release {target.short} is {unusable(target)} (roll back instead)")
    match command:
        case "promote":
            if st not in (Status.RUNNING, Status.PAUSED):
                raise PlanRefused(f"cannot promote: the rollout is {st}")
            new = state.moved(now, f"promoted by {by}", status=Status.RUNNING, reason=None,
                              promoted=f"{state.stage}|{by}|{iso(now)}")
            return settled + [WriteState(tid, new, f"{by} skips the rest of the soak")]
        case "abort":
            if st not in (Status.RUNNING, Status.HALTED):
                raise PlanRefused(f"cannot abort: the rollout is {st}")
            new = state.moved(now, f"aborted by {by}", status=Status.PAUSED, reason=f"aborted by {by}")
            return settled + [WriteState(tid, new, f"{by} stops the rollout where it is")]
        case "rollback":
            if st.final or st == Status.COMPLETING:
                raise PlanRefused(f"cannot roll back: the rollout is {st}"
                                  + (" (change the fleet file to the previous release instead)"
                                     if st == Status.DONE else ""))
            why = f"rollback by {by}" + ("" if target.valid else f" (release {target.short} is {unusable(target)})")
            new = state.moved(now, why, status=Status.ROLLING_BACK, reason=why)
            view = View(desired, observed, target, new)
            return settled + [WriteState(tid, new, f"{by} rolls the rollout back"), *_rollback_actions(view, new, now)]
        case "resume":
            return settled + _resume(desired, observed, target, state, by, now)
    raise PlanRefused(f"unknown command {command!r}")


def _resume(desired: Desired, observed: Observed, target: Release, state: RolloutState, by: str,
            now: datetime) -> list:
    tid = target.id
    if state.status in (Status.DONE, Status.SUPERSEDED) and observed.fleet_release != tid:
        return _start(desired, observed, target, now, previous=state)[:1]  # the state; the next pass pins
    if state.status == Status.ROLLED_BACK:
        new = state.moved(now, f"retry by {by}", status=Status.RUNNING, stage=0, since=iso(now),
                          attempt=state.attempt + 1, baseline=observed.fleet_release, reason=None, changes=(),
                          promoted=None, ready_at=None)
        return [WriteState(tid, _with_canary(desired, observed, target, new), f"{by} retries the rollout from the canary")]
    if state.status not in (Status.HALTED, Status.PAUSED):
        raise PlanRefused(f"nothing to resume: the rollout is {state.status}")
    # Devices a person re-pinned (to anything, "follow the fleet" included) are theirs from now on: never
    # pinned by us again in this rollout. The fleet's release is taken as it is now.
    pins = read_pins(target.tags)
    logged = set().union(*pins.values()) if pins else set()
    taken = tuple(sorted(d.id for d in observed.devices if d.id in logged and d.pinned != tid))
    out: list = [DisownDevices(tid, taken)] if taken else []
    new = state.moved(now, f"resumed by {by}", status=Status.RUNNING, reason=None, changes=(),
                      baseline=observed.fleet_release)
    return out + [WriteState(tid, new, f"{by} resumes" + (f"; {len(taken)} device(s) left to whoever re-pinned them"
                                                          if taken else ""))]
