"""The thin executor: carries the planner's actions out through balena-sdk, in bulk, in a crash-safe order.

Pins go as one `PATCH device?$filter=...id in (...)` per batch of ids - the request the SDK's own
device.pin_to_release sends, without its per-batch lookup GETs (we already know ids and fleet). Each PATCH
is guarded: it only touches devices of this fleet still in the expected state, so a pin a person set
meanwhile is never overwritten. The record of what we pinned is written *after* the pins: a crash in
between leaves devices pinned and unrecorded, which the planner adopts on the next run.
Every request goes through the bounded transport (balena_client): retried with backoff, never forever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from balena import Balena
from balena.exceptions import RequestError

from fleet.rollout.model import (
    CHANGES,
    AdoptPins,
    ForgetPins,
    Observed,
    PinDevices,
    PinFleet,
    RecordAnalysis,
    UnpinDevices,
    WriteState,
)
from fleet.rollout.state import (
    ANALYSIS_TAG,
    LEASE_TAG,
    PINS_PER_TAG,
    PINS_PREFIX,
    STATE_TAG,
    Lease,
    decode_ids,
    encode_ids,
    next_pins_key,
)

PIN_BATCH = 200  # ids per PATCH: the SDK's own chunk size, a URL the API is known to accept


class LeaseHeld(RuntimeError):
    """Another run holds the fleet's lease: this one must not act."""


def _chunks(ids: Iterable[int], size: int) -> list[list[int]]:
    ids = sorted(ids)
    return [ids[i : i + size] for i in range(0, len(ids), size)]


class FleetLease:
    """A fleet tag naming who may act until when. Taken and renewed with a compare-and-swap: a PATCH
    filtered on the value we read (or a POST that fails with 409 when another run created it first)."""

    def __init__(self, sdk: Balena, fleet_id: int, holder: str, ttl: timedelta, clock: Callable[[], datetime]):
        self.sdk, self.fleet_id, self.holder, self.ttl, self.clock = sdk, fleet_id, holder, ttl, clock
        self.value: str | None = None  # what we wrote

    def acquire(self, current: str | None) -> None:
        now = self.clock()
        held = Lease.from_tag(current) if current else None
        if held and not held.free_for(self.holder, now):
            raise LeaseHeld(f"fleet is being rolled out by {held.holder} (lease until {held.until:%H:%M:%S}Z)")
        self._swap(current, Lease(self.holder, now + self.ttl).to_tag())

    def confirm(self, observed_value: str | None) -> None:
        """After reading the fleet again: did our write win?"""
        if observed_value != self.value:
            lease = Lease.from_tag(observed_value or "")
            self.value = None
            raise LeaseHeld(f"lost the lease to {lease.holder if lease else 'another run'}")

    def renew_if_due(self) -> None:
        if self.value is None:
            raise LeaseHeld("the lease is not held")
        lease = Lease.from_tag(self.value)
        assert lease is not None
        now = self.clock()
        if lease.until <= now:
            raise LeaseHeld("our lease expired while acting; stopping (the next run resumes)")
        if lease.until - now < self.ttl / 2:
            self._swap(self.value, Lease(self.holder, now + self.ttl).to_tag())
            self._verify()

    def release(self) -> None:
        if self.value is None:
            return
        self.sdk.pine.delete({"resource": "application_tag", "options": {"$filter": self._match(self.value)}})
        self.value = None

    def _match(self, value: str) -> dict:
        return {"application": self.fleet_id, "tag_key": LEASE_TAG, "value": value}

    def _swap(self, old: str | None, new: str) -> None:
        if old is None:
            try:
                self.sdk.pine.post({"resource": "application_tag",
                                    "body": {"application": self.fleet_id, "tag_key": LEASE_TAG, "value": new}})
            except RequestError as exc:
                if exc.status_code == 409:
                    raise LeaseHeld("another run took the lease first") from exc
                raise
        else:
            self.sdk.pine.patch({"resource": "application_tag", "options": {"$filter": self._match(old)},
                                 "body": {"value": new}})
        self.value = new

    def _verify(self) -> None:
        rows = self.sdk.pine.get({"resource": "application_tag", "options": {
            "$select": "value", "$filter": {"application": self.fleet_id, "tag_key": LEASE_TAG}}})
        self.confirm(rows[0]["value"] if rows else None)


class Executor:
    def __init__(self, sdk: Balena, observed: Observed, lease: FleetLease | None = None,
                 batch: int = PIN_BATCH, pins_per_tag: int = PINS_PER_TAG,
                 log: Callable[[str], None] = lambda line: None):
        self.sdk, self.fleet_id, self.lease = sdk, observed.fleet_id, lease
        self.batch, self.pins_per_tag, self.log = batch, pins_per_tag, log
        self.tags = {r.id: dict(r.tags) for r in observed.releases}  # release tags as we leave them
        self.commits = {r.id: r.short for r in observed.releases}

    def apply(self, actions: list) -> list[str]:
        done = []
        for action in actions:
            if not isinstance(action, CHANGES):  # Wait, Note, NeedAnalysis only report
                continue
            if self.lease:
                self.lease.renew_if_due()
            line = self._one(action)
            done.append(line)
            self.log(line)
        return done

    def _one(self, a: object) -> str:
        if isinstance(a, WriteState):
            self._set_tag(a.release_id, STATE_TAG, a.state.to_tag())
            return f"state of {self.commits.get(a.release_id)}: {a.state.status} - {a.why}"
        if isinstance(a, PinDevices):
            self._pin(a.release_id, a.device_ids)
            return f"pinned {len(a.device_ids)} {a.stage} device(s) to {self.commits.get(a.release_id)}"
        if isinstance(a, AdoptPins):
            self._record(a.release_id, a.device_ids)
            return f"recorded {len(a.device_ids)} device(s) already pinned to {self.commits.get(a.release_id)}"
        if isinstance(a, UnpinDevices):
            self._unpin(a.release_id, a.device_ids)
            return f"unpinned {len(a.device_ids)} device(s) from {self.commits.get(a.release_id)}: {a.why}"
        if isinstance(a, ForgetPins):
            self._forget(a.release_id, a.device_ids)
            return f"forgot {len(a.device_ids)} device(s) no longer pinned by the controller"
        if isinstance(a, PinFleet):
            self.sdk.models.application.pin_to_release(self.fleet_id, a.commit)
            return f"fleet pinned to {a.commit[:7]}"
        if isinstance(a, RecordAnalysis):
            self._set_tag(a.release_id, ANALYSIS_TAG, a.summary)
            return "analysis recorded"
        raise TypeError(f"unknown action {a!r}")

    # ------------------------------------------------------------ devices

    def _patch_devices(self, ids: list[int], expect: int | None, release_id: int | None) -> None:
        id_filter = ids[0] if len(ids) == 1 else {"$in": ids}
        self.sdk.pine.patch({"resource": "device", "options": {"$filter": {
            "belongs_to__application": self.fleet_id, "id": id_filter, "is_pinned_on__release": expect}},
            "body": {"is_pinned_on__release": release_id}})

    def _tick(self) -> None:
        """Before each request that changes pins: a long retry storm must not outlive our lease."""
        if self.lease:
            self.lease.renew_if_due()

    def _pin(self, release_id: int, ids: tuple[int, ...]) -> None:
        pending: list[int] = []
        for chunk in _chunks(ids, self.batch):
            self._tick()
            self._patch_devices(chunk, expect=None, release_id=release_id)
            pending += chunk
            if len(pending) >= self.pins_per_tag:
                self._record(release_id, pending)
                pending = []
        if pending:
            self._record(release_id, pending)

    def _unpin(self, release_id: int, ids: tuple[int, ...]) -> None:
        """Record tag by record tag: a tag goes only once all its devices are unpinned (crash-safe)."""
        remaining = set(ids)
        for key, value in sorted(self.tags[release_id].items()):
            if not key.startswith(PINS_PREFIX):
                continue
            held = decode_ids(value)
            part = held & remaining
            if not part:
                continue
            for chunk in _chunks(part, self.batch):
                self._tick()
                self._patch_devices(chunk, expect=release_id, release_id=None)
            self._rewrite(release_id, key, held - part)
            remaining -= part
        for chunk in _chunks(remaining, self.batch):  # pinned by us but not recorded (a cut-short run)
            self._tick()
            self._patch_devices(chunk, expect=release_id, release_id=None)

    # ------------------------------------------------------------ the record of our pins (release tags)

    def _record(self, release_id: int, ids: Iterable[int]) -> None:
        for chunk in _chunks(ids, self.pins_per_tag):
            # a new key; the SDK's upsert also copes with a retried POST that had in fact gone through (409)
            self._set_tag(release_id, next_pins_key(self.tags[release_id]), encode_ids(chunk))

    def _forget(self, release_id: int, ids: Iterable[int]) -> None:
        gone = set(ids)
        for key, value in sorted(self.tags[release_id].items()):
            if key.startswith(PINS_PREFIX) and decode_ids(value) & gone:
                self._rewrite(release_id, key, decode_ids(value) - gone)

    def _rewrite(self, release_id: int, key: str, ids: frozenset[int]) -> None:
        if ids:
            self._set_tag(release_id, key, encode_ids(ids))
        else:
            self.sdk.pine.delete({"resource": "release_tag", "options": {
                "$filter": {"release": release_id, "tag_key": key}}})
            del self.tags[release_id][key]

    def _set_tag(self, release_id: int, key: str, value: str) -> None:
        if key in self.tags.setdefault(release_id, {}):
            self.sdk.pine.patch({"resource": "release_tag", "options": {
                "$filter": {"release": release_id, "tag_key": key}}, "body": {"value": value}})
        else:  # the SDK's upsert: POST, and PATCH if another run created it meanwhile (409)
            self.sdk.models.release.tags.set(release_id, key, value)
        self.tags[release_id][key] = value
