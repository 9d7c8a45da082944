"""The thin executor: carries the planner's actions out through balena-sdk, in bulk, in a crash-safe order.

Pins go as one `PATCH device?$filter=...id in (...)` per batch of ids - the request the SDK's own
device.pin_to_release sends, without its per-batch lookup GETs (we already know ids and fleet). A batch is
capped by the length of its encoded URL (proxies refuse 8 KB; a 413/414 splits the batch and retries). Each
PATCH is guarded: it only touches devices of this fleet still in the expected state, so a pin a person set
meanwhile is never overwritten. The record of what we pin is written as an intent *before* the pins and
confirmed after: a run cut short in between leaves the ids it may have pinned, which the planner settles.
Every request goes through the bounded transport (balena_client): retried with backoff, never forever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from balena import Balena
from balena.exceptions import RequestError

from fleet.rollout.balena_client import BalenaUnavailable
from fleet.rollout.model import (
    CHANGES,
    AdoptPins,
    DisownDevices,
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
    INTENT,
    LEASE_TAG,
    PINS_PER_TAG,
    PINS_PREFIX,
    STATE_TAG,
    THEIRS_TAG,
    Lease,
    decode_ids,
    encode_ids,
    next_pins_key,
    read_theirs,
)

PIN_BATCH = 200  # ids per PATCH: the SDK's own chunk size
MAX_URL = 6000  # bytes of an encoded request URL: well below the 8 KB that proxies in front of APIs accept
URL_OVERHEAD = 600  # the API prefix and the rest of the guarded filter
TOO_LARGE = (413, 414)


class LeaseHeld(RuntimeError):
    """Another run holds the fleet's lease: this one must not act."""


def _chunks(ids: Iterable[int], size: int) -> list[list[int]]:
    ids = sorted(ids)
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def _url_batches(ids: Iterable[int], size: int, budget: int = MAX_URL - URL_OVERHEAD) -> list[list[int]]:
    """At most `size` ids a batch, and no more than fit `budget` bytes of URL ("%2C" between two ids)."""
    out: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in sorted(ids):
        cost = len(str(i)) + 3
        if cur and (len(cur) >= size or used + cost > budget):
            out.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += cost
    return out + ([cur] if cur else [])


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
            except (RequestError, BalenaUnavailable) as exc:
                # The reply may have been lost after the POST went through (a retry then meets 409): the
                # lease is ours if it holds exactly what we wrote (the holder id is unique to this run).
                if self._current() == new:
                    self.value = new
                    return
                if isinstance(exc, RequestError) and exc.status_code == 409:
                    raise LeaseHeld("another run took the lease first") from exc
                raise
        else:
            self.sdk.pine.patch({"resource": "application_tag", "options": {"$filter": self._match(old)},
                                 "body": {"value": new}})
        self.value = new

    def _current(self) -> str | None:
        rows = self.sdk.pine.get({"resource": "application_tag", "options": {
            "$select": "value", "$filter": {"application": self.fleet_id, "tag_key": LEASE_TAG}}})
        return rows[0]["value"] if rows else None

    def _verify(self) -> None:
        self.confirm(self._current())


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
        c = self.commits.get
        match a:
            case WriteState(release_id=rid, state=state, why=why):
                self._set_tag(rid, STATE_TAG, state.to_tag())
                return f"state of {c(rid)}: {state.status} - {why}"
            case PinDevices(release_id=rid, device_ids=ids, stage=stage):
                self._pin(rid, ids)
                return f"pinned {len(ids)} {stage} device(s) to {c(rid)}"
            case AdoptPins(release_id=rid, key=key, device_ids=ids):
                self._rewrite(rid, key, frozenset(ids))
                return f"recorded {len(ids)} device(s) an interrupted run pinned to {c(rid)}"
            case UnpinDevices(release_id=rid, device_ids=ids, why=why):
                self._unpin(rid, ids)
                return f"unpinned {len(ids)} device(s) from {c(rid)}: {why}"
            case ForgetPins(release_id=rid, device_ids=ids):
                self._forget(rid, ids)
                return f"forgot {len(ids)} device(s) no longer pinned by the controller"
            case DisownDevices(release_id=rid, device_ids=ids):
                self._set_tag(rid, THEIRS_TAG, encode_ids(read_theirs(self.tags[rid]) | set(ids)))
                self._forget(rid, ids)
                return f"{len(ids)} device(s) left to the person who re-pinned them, for the rest of this rollout"
            case PinFleet(release_id=rid, commit=commit):
                self.sdk.models.application.pin_to_release(self.fleet_id, commit)
                return f"fleet pinned to {commit[:7]}"
            case RecordAnalysis(release_id=rid, summary=summary):
                self._set_tag(rid, ANALYSIS_TAG, summary)
                return "analysis recorded"
        raise TypeError(f"unknown action {a!r}")

    # ------------------------------------------------------------ devices

    def _patch_devices(self, ids: list[int], expect: int | None, release_id: int | None) -> None:
        id_filter = ids[0] if len(ids) == 1 else {"$in": ids}
        try:
            self.sdk.pine.patch({"resource": "device", "options": {"$filter": {
                "belongs_to__application": self.fleet_id, "id": id_filter, "is_pinned_on__release": expect}},
                "body": {"is_pinned_on__release": release_id}})
        except RequestError as exc:
            if exc.status_code not in TOO_LARGE or len(ids) == 1:
                raise
            self.log(f"HTTP {exc.status_code} for {len(ids)} ids: split in two")  # a proxy with a lower limit
            half = len(ids) // 2
            self._patch_devices(ids[:half], expect, release_id)
            self._patch_devices(ids[half:], expect, release_id)

    def _tick(self) -> None:
        """Before each request that changes pins: a long retry storm must not outlive our lease."""
        if self.lease:
            self.lease.renew_if_due()

    def _pin(self, release_id: int, ids: tuple[int, ...]) -> None:
        """Per record tag: the intent first, then the pins, then the record confirmed."""
        for group in _chunks(ids, self.pins_per_tag):
            key = next_pins_key(self.tags[release_id])
            self._set_tag(release_id, key, encode_ids(group, INTENT))
            for chunk in _url_batches(group, self.batch):
                self._tick()
                self._patch_devices(chunk, expect=None, release_id=release_id)
            self._set_tag(release_id, key, encode_ids(group))

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
            for chunk in _url_batches(part, self.batch):
                self._tick()
                self._patch_devices(chunk, expect=release_id, release_id=None)
            self._rewrite(release_id, key, held - part)
            remaining -= part

    # ------------------------------------------------------------ the record of our pins (release tags)

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
