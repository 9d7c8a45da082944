"""Plans and status as text tables (a terminal) or Markdown (a pull-request comment, a job summary).

A PR comment shows what a reviewer decides on: current -> target release, the whole stage schedule with
device counts and expected times, the gates, and the actions (bookkeeping rows left out); it never exceeds
GitHub's 65,536-character limit.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

from fleet.rollout.model import (
    AdoptPins,
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
from fleet.rollout.planner import Desired, NeedAnalysis, PlanRefused, View, resolve_release, unusable
from fleet.rollout.selection import CanaryMissing
from fleet.rollout.state import ANALYSIS_TAG, RolloutState, Status, parse_iso, read_state

GITHUB_LIMIT = 65_536
BUDGET = GITHUB_LIMIT - 2_000  # room for the heading and the truncation line
INTERNAL = (AdoptPins, ForgetPins, DisownDevices, RecordAnalysis)  # bookkeeping of our own records


def describe(action: object, observed: Observed) -> tuple[str, str]:
    c = observed.commit_of
    match action:
        case WriteState(state=st, why=why):
            return "decision", f"{st.status}, stage {st.stage}: {why}"
        case PinDevices(release_id=rid, device_ids=ids, stage=stage):
            return "pin", f"{len(ids)} {stage} device(s) -> {c(rid)}"
        case AdoptPins(release_id=rid, device_ids=ids):
            return "adopt", f"{len(ids)} device(s) already on {c(rid)} (a run was cut short)"
        case UnpinDevices(release_id=rid, device_ids=ids, why=why):
            return "unpin", f"{len(ids)} device(s) from {c(rid)}: {why}"
        case ForgetPins(device_ids=ids):
            return "forget", f"{len(ids)} device(s) no longer the controller's"
        case DisownDevices(device_ids=ids):
            return "hands off", f"{len(ids)} device(s) left to whoever re-pinned them"
        case PinFleet(commit=commit):
            return "pin fleet", f"{observed.slug} -> {commit[:7]}"
        case RecordAnalysis(summary=summary):
            data = json.loads(summary)
            return "analysis", f"{data['stage']}: {data['verdict']}"
        case Wait(reason=reason, until=until):
            return "wait", reason + (f" (until {until:%Y-%m-%d %H:%M}Z)" if until else "")
        case NeedAnalysis(request=req):
            return "analysis due", f"{req.stage}: {len(req.devices)} device(s)"
        case Note(message=message):
            return "note", message
    return type(action).__name__, str(action)


def table(rows: list[tuple[str, ...]], header: tuple[str, ...], markdown: bool) -> str:
    if markdown:
        esc = [tuple(str(x).replace("|", "\\|").replace("\n", " ") for x in r) for r in rows]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _capped(rows: list[tuple[str, ...]], budget: int) -> list[tuple[str, ...]]:
    """The first rows that fit `budget` characters, and one line saying how many were left out."""
    out, used = [], 0
    for i, r in enumerate(rows):
        used += sum(len(x) + 3 for x in r) + 2
        if used > budget:
            return out + [("…", "", f"{len(rows) - i} more row(s) left out (`edgecv rollout plan` shows them all)")]
        out.append(r)
    return out


def _dur(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h" + (f"{s % 3600 // 60:02d}m" if s % 3600 else "")


def _target(desired: Desired, observed: Observed) -> tuple[Release | None, str | None]:
    try:
        return resolve_release(desired, observed, unusable_ok=True), None
    except PlanRefused as exc:
        return None, str(exc)


def schedule(desired: Desired, observed: Observed, target: Release, state: RolloutState | None,
             now: datetime, markdown: bool) -> str:
    """Every stage with its device count, soak and expected start (soaks back to back from the current stage)."""
    try:
        view = View(desired, observed, target, state)
    except CanaryMissing as exc:
        return f"stages: {exc}"
    current = state.stage if state and state.status == Status.RUNNING else None
    at = (parse_iso(state.ready_at or state.since) if state and current is not None else now)
    rows = []
    for st in view.stages:
        if state is not None and st.index < state.stage:
            when = "passed"
        elif state is not None and current is None:
            when = str(state.status) if st.index == state.stage else "-"
        else:
            when = ("now" if state is None and st.index == 0 else f"~{at:%Y-%m-%d %H:%M}Z")
            at += timedelta(seconds=st.soak_s)
        rows.append((st.name, f"{st.percent:g}%" if st.percent else "-", str(len(view.stage_set(st.index))),
                     _dur(st.soak_s), when))
    return table(rows, ("stage", "share", "devices", "soak", "expected start"), markdown)


def gates(desired: Desired) -> list[str]:
    out = []
    for ch in desired.analysis.checks:
        limits = [f"max {ch.max}" if ch.max is not None else "", f"min {ch.min}" if ch.min is not None else "",
                  f"≤ {ch.max_vs_baseline:g}× baseline" if ch.max_vs_baseline else "",
                  f"≥ {ch.min_vs_baseline:g}× baseline" if ch.min_vs_baseline else ""]
        out.append(f"{ch.name}: " + ", ".join(x for x in limits if x))
    return out


def render_plan(desired: Desired, observed: Observed, actions: list, markdown: bool = False,
                error: str | None = None, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    title = f"Rollout plan for fleet `{desired.slug}` ({desired.tags})"
    out = [f"### {title}" if markdown else title, ""]
    if error:
        return "\n".join(out) + ("**Refused:** " if markdown else "REFUSED: ") + error + "\n"
    target, _ = _target(desired, observed)
    bullet = "- " if markdown else ""
    if target is not None:
        state = read_state(target.tags)
        flag = "" if target.valid else f" ({unusable(target)})"
        out.append(f"{bullet}release: {observed.commit_of(observed.fleet_release)} → {target.short}{flag}"
                   + (f"; rollout {state.status}, stage {state.stage}" if state else ""))
        out.append(f"{bullet}gates, each stage after its soak (window {_dur(desired.analysis.window.total_seconds())}"
                   f", at least {desired.analysis.min_samples} samples, no data = wait):")
        out += [f"  - {g}" if markdown else f"  {g}" for g in gates(desired)]
        out += ["", schedule(desired, observed, target, state, now, markdown), ""]
    shown = [a for a in actions if not isinstance(a, INTERNAL)]
    rows = [(str(i + 1), *describe(a, observed)) for i, a in enumerate(shown)] or [("1", "none", "nothing to do")]
    head = "\n".join(out) + "\n"
    return head + table(_capped(rows, BUDGET - len(head)), ("#", "action", "detail"), markdown) + "\n"


def _left(until: datetime, now: datetime) -> str:
    s = max(0, int((until - now).total_seconds()))
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def render_status(desired: Desired, observed: Observed, now: datetime, markdown: bool = False) -> str:
    """Markdown renders in a job summary: a heading, facts as a list, the stages as a table."""
    b = "- " if markdown else ""
    out = [f"### Rollout status: fleet `{observed.slug}`\n" if markdown else "",
           f"{b}fleet {observed.slug}: runs {observed.commit_of(observed.fleet_release)}"
           + (" (tracks latest)" if observed.tracks_latest else "")]
    running = Counter(observed.commit_of(d.running) for d in observed.devices)
    online = sum(d.reachable for d in observed.devices)
    out.append(f"{b}devices: {len(observed.devices)} ({online} online); running: "
               + ", ".join(f"{k} x{v}" for k, v in running.most_common()))
    target, refused = _target(desired, observed)
    if target is None:
        return "\n".join(x for x in out + [f"{b}desired release: {refused}"] if x) + "\n"
    state = read_state(target.tags)
    if state is None:
        return "\n".join(x for x in out + [f"{b}desired release {target.short}: no rollout started"] if x) + "\n"
    flag = "" if target.valid else f" - release {unusable(target)}: the next pass rolls it back"
    out.append(f"{b}rollout of {target.short} (attempt {state.attempt}): {state.status}"
               + (f" - {state.reason}" if state.reason else "") + (flag if not state.status.final else
                                                                    f" (release {unusable(target)})" if flag else ""))
    try:
        view = View(desired, observed, target, state)
    except CanaryMissing as exc:
        return "\n".join(x for x in out + [str(exc)] if x) + "\n"
    rows = []
    for st in view.stages:
        members = view.stage_set(st.index)
        pinned = sum(d.pinned == target.id for d in members)
        ready = sum(d.pinned == target.id and d.running == target.id and d.reachable for d in members)
        offline = sum(not d.reachable for d in members)
        if st.index < state.stage:
            where = "passed"
        elif st.index == state.stage:
            if state.status == Status.RUNNING and state.ready_at:
                ends = parse_iso(state.ready_at) + timedelta(seconds=st.soak_s)
                where = f"current, soak {_left(ends, now)} left"
            elif state.status == Status.RUNNING:
                where = "current, waiting for its devices to run the release"
            else:
                where = str(state.status)
        else:
            where = "next" if st.index == state.stage + 1 and state.status == Status.RUNNING else ""
        rows.append((st.name, f"{st.percent:g}%" if st.percent else "-", str(len(members)), str(pinned), str(ready),
                     str(offline), where))
    out += ["", table(rows, ("stage", "share", "devices", "pinned", "ready", "offline", "status"), markdown), ""]
    if ANALYSIS_TAG in target.tags:
        data = json.loads(target.tags[ANALYSIS_TAG])
        out.append(f"{b}last analysis ({data['stage']}, {data['at']}): {data['verdict']}")
        out += [f"  {b}{k}: {v}" for k, v in data["checks"].items()]
    if state.history:
        out.append(f"{b}history:")
        out += [f"  {b}{h}" for h in state.history[-8:]]
    return "\n".join(out).lstrip("\n") + "\n"
