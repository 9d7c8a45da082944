"""Plans and status as text tables (a terminal) or Markdown (a pull-request comment)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta

from fleet.rollout.model import (
    AdoptPins,
    ForgetPins,
    Note,
    Observed,
    PinDevices,
    PinFleet,
    RecordAnalysis,
    UnpinDevices,
    Wait,
    WriteState,
)
from fleet.rollout.planner import Desired, NeedAnalysis, PlanRefused, View, resolve_release
from fleet.rollout.selection import CanaryMissing
from fleet.rollout.state import ANALYSIS_TAG, read_state


def describe(action: object, observed: Observed) -> tuple[str, str]:
    c = observed.commit_of
    if isinstance(action, WriteState):
        st = action.state
        return "state", f"{st.status}, stage {st.stage}: {action.why}"
    if isinstance(action, PinDevices):
        return "pin", f"{len(action.device_ids)} {action.stage} device(s) -> {c(action.release_id)}"
    if isinstance(action, AdoptPins):
        return "adopt", f"{len(action.device_ids)} device(s) already on {c(action.release_id)} (a run was cut short)"
    if isinstance(action, UnpinDevices):
        return "unpin", f"{len(action.device_ids)} device(s) from {c(action.release_id)}: {action.why}"
    if isinstance(action, ForgetPins):
        return "forget", f"{len(action.device_ids)} device(s) no longer the controller's"
    if isinstance(action, PinFleet):
        return "pin fleet", f"{observed.slug} -> {action.commit[:7]}"
    if isinstance(action, RecordAnalysis):
        data = json.loads(action.summary)
        return "analysis", f"{data['stage']}: {data['verdict']}"
    if isinstance(action, Wait):
        return "wait", action.reason + (f" (until {action.until:%Y-%m-%d %H:%M}Z)" if action.until else "")
    if isinstance(action, NeedAnalysis):
        return "analysis due", f"{action.request.stage}: {len(action.request.devices)} device(s)"
    if isinstance(action, Note):
        return "note", action.message
    return type(action).__name__, str(action)


def table(rows: list[tuple[str, ...]], header: tuple[str, ...], markdown: bool) -> str:
    if markdown:
        esc = [tuple(str(x).replace("|", "\\|") for x in r) for r in rows]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def render_plan(desired: Desired, observed: Observed, actions: list, markdown: bool = False,
                error: str | None = None) -> str:
    title = f"Rollout plan for fleet `{desired.slug}` ({desired.tags})"
    head = f"### {title}\n\n" if markdown else title + "\n\n"
    if error:
        return head + ("**Refused:** " if markdown else "REFUSED: ") + error + "\n"
    rows = [(str(i + 1), *describe(a, observed)) for i, a in enumerate(actions)]
    if not rows:
        rows = [("1", "none", "nothing to do")]
    return head + table(rows, ("#", "action", "detail"), markdown) + "\n"


def _left(until: datetime, now: datetime) -> str:
    s = max(0, int((until - now).total_seconds()))
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def render_status(desired: Desired, observed: Observed, now: datetime, markdown: bool = False) -> str:
    out = [f"fleet {observed.slug}: runs {observed.commit_of(observed.fleet_release)}"
           + (" (tracks latest)" if observed.tracks_latest else "")]
    running = Counter(observed.commit_of(d.running) for d in observed.devices)
    online = sum(d.is_online for d in observed.devices)
    out.append(f"devices: {len(observed.devices)} ({online} online); running: "
               + ", ".join(f"{k} x{v}" for k, v in running.most_common()))
    try:
        target = resolve_release(desired, observed)
    except PlanRefused as exc:
        return "\n".join(out + [f"desired release: {exc}"]) + "\n"
    state = read_state(target.tags)
    if state is None:
        return "\n".join(out + [f"desired release {target.short}: no rollout started"]) + "\n"
    out.append(f"rollout of {target.short} (attempt {state.attempt}): {state.status}"
               + (f" - {state.reason}" if state.reason else ""))
    try:
        view = View(desired, observed, target, state)
    except CanaryMissing as exc:
        return "\n".join(out + [str(exc)]) + "\n"
    rows = []
    for st in view.stages:
        members = view.stage_set(st.index)
        pinned = sum(d.pinned == target.id for d in members)
        ready = sum(d.pinned == target.id and d.running == target.id and d.is_online for d in members)
        offline = sum(not d.is_online for d in members)
        if st.index < state.stage:
            where = "passed"
        elif st.index == state.stage:
            ends = state.since_at + timedelta(seconds=st.soak_s)
            where = f"current, soak {_left(ends, now)} left" if state.status == "running" else state.status
        else:
            where = "next" if st.index == state.stage + 1 else ""
        rows.append((st.name, f"{st.percent:g}%" if st.percent else "-", str(len(members)), str(pinned), str(ready),
                     str(offline), where))
    out.append(table(rows, ("stage", "share", "devices", "pinned", "ready", "offline", "status"), markdown))
    if ANALYSIS_TAG in target.tags:
        data = json.loads(target.tags[ANALYSIS_TAG])
        out.append(f"last analysis ({data['stage']}, {data['at']}): {data['verdict']}")
        out += [f"  {k}: {v}" for k, v in data["checks"].items()]
    if state.history:
        out.append("history:")
        out += [f"  {h}" for h in state.history[-8:]]
    return "\n".join(out) + "\n"
