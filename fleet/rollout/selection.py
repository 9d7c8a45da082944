"""Which devices each stage covers: deterministic, stable, and each stage a superset of the one before.

Devices are ranked by a hash of (rollout key, device uuid): the same fleet and release always give the
same order, whatever machine plans it, and a different release shuffles the fleet anew. The canary
devices come first; a stage at p percent takes the first ceil(p% of the eligible devices).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from fleet.rollout.model import Device
from fleet.spec.fleetspec import RolloutPolicy


def rank(key: str, uuid: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{key}:{uuid}".encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    percent: float | None  # None for the canary
    soak_s: float


def stages(policy: RolloutPolicy) -> list[Stage]:
    out = [Stage(0, "canary", None, policy.canary.soak.total_seconds()),
           Stage(1, "pilot", policy.pilot.percent, policy.pilot.soak.total_seconds())]
    for i, w in enumerate(policy.waves, start=1):
        out.append(Stage(len(out), f"wave{i}", w.percent, w.soak.total_seconds()))
    return out


class CanaryMissing(ValueError):
    pass


def canary_devices(policy: RolloutPolicy, eligible: Sequence[Device], key: str, strict: bool = True) -> list[Device]:
    """strict: every named canary must be there, and at least one tagged one (when the rollout starts;
    later, a canary that left the fleet must not block the waves)."""
    c = policy.canary
    if c.devices:
        by_uuid = {d.uuid: d for d in eligible}
        missing = [u for u in c.devices if u not in by_uuid]
        if missing and not strict:
            return [by_uuid[u] for u in c.devices if u in by_uuid]
        if missing:
            raise CanaryMissing(f"canary device(s) not in the fleet or pinned by someone else: {missing}")
        return [by_uuid[u] for u in c.devices]
    assert c.tag is not None
    tagged = [d for d in eligible if c.tag.key in d.tags and (c.tag.value is None or d.tags[c.tag.key] == c.tag.value)]
    if not tagged and strict:
        want = c.tag.key + (f"={c.tag.value}" if c.tag.value is not None else "")
        raise CanaryMissing(f"no device in the fleet carries the canary tag {want}")
    return sorted(tagged, key=lambda d: rank(key, d.uuid))[: c.max_devices]


def stage_members(policy: RolloutPolicy, eligible: Sequence[Device], key: str, strict: bool = True,
                  canary_ids: Sequence[int] = ()) -> list[list[Device]]:
    """Devices per stage (cumulative: stage i includes every device of stage i-1). `canary_ids`: the canary
    recorded when the rollout started (chosen once: devices tagged later never join it)."""
    if canary_ids:
        by_id = {d.id: d for d in eligible}
        canary = [by_id[i] for i in canary_ids if i in by_id]
    else:
        canary = canary_devices(policy, eligible, key, strict)
    first = {d.id for d in canary}
    rest = sorted((d for d in eligible if d.id not in first), key=lambda d: rank(key, d.uuid))
    out = [canary]
    for st in stages(policy)[1:]:
        k = math.ceil(st.percent / 100 * len(eligible) - 1e-9)
        out.append(canary + rest[: max(0, k - len(canary))])
    return out
