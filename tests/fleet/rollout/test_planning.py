"""Pure parts: stage selection, the state kept in tags, release resolution. No API, no clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.rollout.model import Device, Observed, PinDevices, Release
from fleet.rollout.planner import Desired, PlanRefused, plan, resolve_release
from fleet.rollout.selection import CanaryMissing, stage_members
from fleet.rollout.state import Lease, RolloutState, decode_ids, encode_ids
from fleet.spec.fleetspec import APP_TAG, MODEL_TAG
from tests.fleet.rollout.conftest import MODEL, SLUG, policy

NOW = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)


def fleet(n: int, canaries: int = 2) -> list[Device]:
    return [Device(i, f"{i:032x}", f"d{i}", True, None, 1, {"edgecv.canary": "true"} if i < canaries else {})
            for i in range(n)]


def test_stages_are_deterministic_supersets_of_the_exact_share():
    devices = fleet(1000)
    members = stage_members(policy(), devices, "acme/x:abc")
    assert [len(m) for m in members] == [2, 100, 250, 500, 1000]
    for small, big in zip(members, members[1:], strict=False):
        assert {d.id for d in small} <= {d.id for d in big}
    shuffled = random.Random(7).sample(devices, len(devices))  # the API's order does not matter
    assert [[d.id for d in m] for m in stage_members(policy(), shuffled, "acme/x:abc")] == [[d.id for d in m] for m in members]
    other = stage_members(policy(), devices, "acme/x:def")  # another release shuffles the fleet anew
    assert {d.id for d in other[1]} != {d.id for d in members[1]}
    assert {d.id for d in other[0]} == {0, 1}  # the canaries stay the canaries


def test_named_canaries_must_be_in_the_fleet():
    pol = policy(canary={"devices": [f"{5:032x}", f"{7:032x}"]})
    assert [d.id for d in stage_members(pol, fleet(20), "k")[0]] == [5, 7]
    with pytest.raises(CanaryMissing, match=f"{99:032x}"):
        stage_members(policy(canary={"devices": [f"{99:032x}"]}), fleet(20), "k")
    with pytest.raises(CanaryMissing, match="canary tag edgecv.canary=true"):
        stage_members(policy(), fleet(20, canaries=0), "k")
    # past the canary stage, a canary that left the fleet does not block the waves
    gone = policy(canary={"devices": [f"{5:032x}", f"{99:032x}"]})
    later = stage_members(gone, fleet(20), "k", strict=False)
    assert [d.id for d in later[0]] == [5] and len(later[1]) == 2 and later[1][0].id == 5


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(min_value=1, max_value=2**40), max_size=500))
def test_pin_records_round_trip(ids):
    assert decode_ids(encode_ids(ids)) == frozenset(ids)


def test_pin_records_are_compact():
    ids = random.Random(1).sample(range(1_000_000, 9_000_000), 1000)
    assert len(encode_ids(ids)) < 3000  # 1000 devices scattered over the API id space: one tag of < 3 kB


def test_state_and_lease_round_trip():
    s = RolloutState("abc", "running", 2, "2025-03-03T08:00:00Z", 17).moved(NOW, "x", promoted="2|bob|t")
    assert RolloutState.from_tag(s.to_tag()) == s and s.history == ("2025-03-03T08:00:00Z x",)
    lease = Lease("ci@runner/1a2b", NOW)
    assert Lease.from_tag(lease.to_tag()) == lease
    assert lease.free_for("ci@runner/1a2b", NOW) and not Lease("x", NOW.replace(hour=9)).free_for("y", NOW)


def observed(releases: list[Release], devices: list[Device] | None = None) -> Observed:
    return Observed(1, SLUG, False, 1, tuple(releases), tuple(devices or fleet(10)))


def rel(i: int, commit: str, status: str = "success", app: str = "1.4.0", model: str = MODEL, **kw) -> Release:
    return Release(i, commit, status, f"2025-01-0{i}", tags={APP_TAG: app, MODEL_TAG: model}, **kw)


def test_release_resolution_never_guesses():
    desired = Desired(SLUG, "1.4.0", (MODEL,), None, policy())
    base = rel(1, "0" * 40, app="1.3.0")
    assert resolve_release(desired, observed([base, rel(2, "a" * 40)])).id == 2
    # models compare as a set, whatever order the build wrote them in
    two = Desired(SLUG, "1.4.0", ("a@1.0.0", "b@2.0.0"), None, policy())
    assert resolve_release(two, observed([rel(3, "c" * 40, model="b@2.0.0,a@1.0.0")])).id == 3
    with pytest.raises(PlanRefused, match="2 successful releases .* set release.commit"):
        resolve_release(desired, observed([rel(2, "a" * 40), rel(3, "b" * 40)]))
    pick = Desired(SLUG, "1.4.0", (MODEL,), "bbbbbbb", policy())
    assert resolve_release(pick, observed([rel(2, "a" * 40), rel(3, "b" * 40)])).id == 3
    with pytest.raises(PlanRefused, match=r"did not build successfully: aaaaaaa \(invalidated\)"):
        resolve_release(desired, observed([rel(2, "a" * 40, is_invalidated=True)]))
    with pytest.raises(PlanRefused, match="tagged releases: 0000000 .1.3.0"):
        resolve_release(desired, observed([base]))


def test_planning_is_pure_and_repeatable():
    desired = Desired(SLUG, "1.4.0", (MODEL,), None, policy())
    obs = observed([rel(1, "0" * 40, app="1.3.0"), rel(2, "a" * 40)])
    first = plan(desired, obs, None, NOW)
    assert first == plan(desired, obs, None, NOW)
    pins = [a for a in first if isinstance(a, PinDevices)]
    assert len(pins) == 1 and set(pins[0].device_ids) == {0, 1} and pins[0].stage == "canary"


def test_default_checks_only_use_metrics_the_device_exports():
    import re

    from app.metrics import Metrics
    from fleet.spec.fleetspec import DEFAULT_CHECKS

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    exported = {f.name + suffix for f in Metrics().registry.collect() for suffix in suffixes.get(f.type, ("",))}
    used = {m for c in DEFAULT_CHECKS for q in (c.query, c.samples or "") for m in re.findall(r"\b(edgecv_\w+)", q)}
    assert used and used <= exported, used - exported
