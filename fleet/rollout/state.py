"""Rollout progress kept on the fleet itself, so any run can crash and the next one resumes.

On the target release (release tags):
  edgecv.rollout            JSON RolloutState: status, stage, stage start, baseline release, reason, promotion
  edgecv.rollout.analysis   JSON summary of the last analysis
  edgecv.pins.<n>           the device ids the controller pinned to this release (compact encoding) -
                            the marker that makes a pin changed by someone else attributable. Written as an
                            intent ("i1:") *before* the pin requests and confirmed ("v1:") after, so a run
                            cut short in between leaves a record of what it may have pinned
  edgecv.theirs             devices a person took over during this rollout: never pinned or unpinned by us
On the fleet (application tags):
  edgecv.rollout.lease      who may act now, and until when
"""

from __future__ import annotations

import base64
import enum
import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

STATE_TAG = "edgecv.rollout"
ANALYSIS_TAG = "edgecv.rollout.analysis"
PINS_PREFIX = "edgecv.pins."
LEASE_TAG = "edgecv.rollout.lease"

THEIRS_TAG = "edgecv.theirs"


class Status(enum.StrEnum):
    RUNNING = "running"  # stages advance
    PAUSED = "paused"  # waits for a human: failed analysis with on_failure=pause, abort, devices that never updated
    HALTED = "halted"  # someone changed a pin outside the controller
    ROLLING_BACK = "rolling_back"  # on the way to rolled_back
    COMPLETING = "completing"  # on the way to done
    ROLLED_BACK = "rolled_back"
    DONE = "done"
    SUPERSEDED = "superseded"  # the fleet file moved on; its pins were undone

    @property
    def final(self) -> bool:
        return self in (Status.ROLLED_BACK, Status.DONE, Status.SUPERSEDED)


ACTIVE = tuple(s for s in Status if not s.final)
FINAL = tuple(s for s in Status if s.final)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class RolloutState:
    rollout_id: str
    status: Status
    stage: int  # index into the policy's stages (canary, pilot, wave1, ...)
    since: str  # ISO time the stage started
    baseline: int | None  # the fleet's release when the rollout started (what rollback returns to)
    attempt: int = 1
    reason: str | None = None
    changes: tuple[str, ...] = ()  # outside changes that halted the rollout
    promoted: str | None = None  # "<stage index>|<who>|<when>": skip the rest of that stage's soak
    history: tuple[str, ...] = field(default=())  # short log of transitions, newest last
    canary: tuple[int, ...] = ()  # device ids chosen as the canary when the rollout started (chosen once)
    ready_at: str | None = None  # ISO time the stage's devices were first seen running the release: its soak starts

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))

    def to_tag(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_tag(cls, text: str) -> RolloutState:
        data = json.loads(text)
        data["changes"] = tuple(data.get("changes", ()))
        data["history"] = tuple(data.get("history", ()))
        data["canary"] = tuple(data.get("canary", ()))
        return cls(**data)

    @property
    def since_at(self) -> datetime:
        return parse_iso(self.since)

    def promoted_stage(self) -> int | None:
        return int(self.promoted.split("|")[0]) if self.promoted else None

    def last_change(self) -> str:
        """ISO time of the latest transition (ISO strings in UTC compare as times)."""
        return self.history[-1].split(" ", 1)[0] if self.history else self.since

    def moved(self, now: datetime, event: str, **changes: object) -> RolloutState:
        """A transition, with a history line (the last 20 kept, so the tag stays small)."""
        line = f"{iso(now)} {event}"
        return replace(self, history=(*self.history, line)[-20:], **changes)  # type: ignore[arg-type]


def read_state(tags: Mapping[str, str]) -> RolloutState | None:
    text = tags.get(STATE_TAG)
    if not text:
        return None
    try:
        return RolloutState.from_tag(text)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"release tag {STATE_TAG} is not a rollout state ({exc}): {text[:80]!r}") from exc


# ---------------------------------------------------------------- the record of pinned devices

PINS_PER_TAG = 1000  # ids per tag: under 3 kB of tag value


CONFIRMED, INTENT = "v1:", "i1:"


def encode_ids(ids: Iterable[int], prefix: str = CONFIRMED) -> str:
    """Sorted ids as varint deltas, zlib, base64url: ~3 characters a device."""
    out, prev = bytearray(), 0
    for i in sorted(set(ids)):
        delta, prev = i - prev, i
        while True:
            byte, delta = delta & 0x7F, delta >> 7
            out.append(byte | (0x80 if delta else 0))
            if not delta:
                break
    return prefix + base64.urlsafe_b64encode(zlib.compress(bytes(out), 9)).decode()


def decode_ids(text: str) -> frozenset[int]:
    if not text.startswith((CONFIRMED, INTENT)):
        raise ValueError(f"unknown pin record encoding: {text[:10]!r}")
    data = zlib.decompress(base64.urlsafe_b64decode(text[3:]))
    ids, cur, shift, prev = [], 0, 0, 0
    for byte in data:
        cur |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            prev += cur
            ids.append(prev)
            cur, shift = 0, 0
    return frozenset(ids)


def read_pins(tags: Mapping[str, str]) -> dict[str, frozenset[int]]:
    """Tag key -> device ids, for every confirmed edgecv.pins.<n> tag of a release."""
    return {k: decode_ids(v) for k, v in tags.items() if k.startswith(PINS_PREFIX) and v.startswith(CONFIRMED)}


def read_intents(tags: Mapping[str, str]) -> dict[str, frozenset[int]]:
    """Tag key -> device ids a run meant to pin and did not confirm (it was cut short)."""
    return {k: decode_ids(v) for k, v in tags.items() if k.startswith(PINS_PREFIX) and v.startswith(INTENT)}


def read_theirs(tags: Mapping[str, str]) -> frozenset[int]:
    text = tags.get(THEIRS_TAG)
    return decode_ids(text) if text else frozenset()


def next_pins_key(existing: Iterable[str]) -> str:
    nums = [int(k.removeprefix(PINS_PREFIX)) for k in existing if k.removeprefix(PINS_PREFIX).isdigit()]
    return f"{PINS_PREFIX}{max(nums, default=0) + 1}"


# ---------------------------------------------------------------- the lease


@dataclass(frozen=True)
class Lease:
    holder: str
    until: datetime

    def to_tag(self) -> str:
        return f"{self.holder} until {iso(self.until)}"

    @classmethod
    def from_tag(cls, text: str) -> Lease | None:
        holder, sep, until = text.rpartition(" until ")
        try:
            return cls(holder, parse_iso(until)) if sep else None
        except ValueError:
            return None

    def free_for(self, holder: str, now: datetime) -> bool:
        return self.holder == holder or self.until <= now
