"""What the controller sees of a fleet (Observed) and what it may do (actions). Plain frozen data."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from fleet.rollout.state import RolloutState


@dataclass(frozen=True)
class Release:
    id: int
    commit: str
    status: str  # success, failed, running, ...
    created_at: str
    is_invalidated: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.status == "success" and not self.is_invalidated

    @property
    def short(self) -> str:
        return self.commit[:7]


@dataclass(frozen=True)
class Device:
    id: int
    uuid: str
    name: str
    is_online: bool
    pinned: int | None  # is_pinned_on__release; None = follows the fleet
    running: int | None  # is_running__release
    tags: Mapping[str, str] = field(default_factory=dict)
    heartbeat: str | None = None  # api_heartbeat_state: online, timeout, offline, unknown
    update_status: str | None = None  # what the supervisor reports: downloading, done, rejected, aborted, ...

    @property
    def reachable(self) -> bool:
        """Polling the API (a device without VPN, is_online false, still updates) or on the VPN."""
        return self.is_online or self.heartbeat == "online"

    @property
    def update_failed(self) -> bool:
        return self.update_status in FAILED_UPDATES


FAILED_UPDATES = frozenset({"rejected", "aborted"})  # the supervisor gave up on the target release


@dataclass(frozen=True)
class Observed:
    fleet_id: int
    slug: str
    tracks_latest: bool
    fleet_release: int | None  # the fleet's should_be_running__release
    releases: tuple[Release, ...]
    devices: tuple[Device, ...]
    fleet_tags: Mapping[str, str] = field(default_factory=dict)

    def release(self, release_id: int | None) -> Release | None:
        return next((r for r in self.releases if r.id == release_id), None)

    def commit_of(self, release_id: int | None) -> str:
        rel = self.release(release_id)
        return rel.short if rel else ("none" if release_id is None else f"#{release_id}")


# ---------------------------------------------------------------- actions (what plan() returns)


@dataclass(frozen=True)
class WriteState:
    """Write the rollout's state (one release tag, so a transition is a single atomic write)."""

    release_id: int
    state: RolloutState
    why: str


@dataclass(frozen=True)
class PinDevices:
    """Pin devices that follow the fleet to the release (guarded: a pin set meanwhile is left alone)."""

    release_id: int
    device_ids: tuple[int, ...]
    stage: str


@dataclass(frozen=True)
class AdoptPins:
    """Confirm an intent record left by a run cut short: the devices it did pin (`device_ids`) are ours,
    the others it never pinned (an empty list deletes the record)."""

    release_id: int
    key: str
    device_ids: tuple[int, ...]


@dataclass(frozen=True)
class UnpinDevices:
    """Let devices follow the fleet again (guarded: only those still pinned to the release), then forget them."""

    release_id: int
    device_ids: tuple[int, ...]
    why: str


@dataclass(frozen=True)
class ForgetPins:
    """Drop devices from the record of what we pinned (a human took them over; `resume` acknowledged it)."""

    release_id: int
    device_ids: tuple[int, ...]


@dataclass(frozen=True)
class DisownDevices:
    """Devices a person took over: dropped from our record and marked theirs, never pinned by us again in
    this rollout, whatever they were set to (`resume` acknowledged it)."""

    release_id: int
    device_ids: tuple[int, ...]


@dataclass(frozen=True)
class PinFleet:
    """Set the fleet's release (and stop it tracking the latest one)."""

    release_id: int
    commit: str


@dataclass(frozen=True)
class RecordAnalysis:
    release_id: int
    summary: str  # compact JSON


@dataclass(frozen=True)
class Wait:
    reason: str
    until: datetime | None = None


@dataclass(frozen=True)
class Note:
    message: str


Change = WriteState | PinDevices | AdoptPins | UnpinDevices | ForgetPins | DisownDevices | PinFleet | RecordAnalysis
Action = Change | Wait | Note
CHANGES = typing.get_args(Change)  # a new action is added to `Change` once


def changes(actions: list) -> list:
    """The actions that write something (Wait and Note only report)."""
    return [a for a in actions if isinstance(a, CHANGES)]
