"""Scenario tests: the controller drives a fleet in the balena API double through the real SDK, over
simulated time (the planner takes `now`; retries sleep in simulated time too)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from fleet.rollout.balena_client import BalenaUnavailable, RetryPolicy, transport
from fleet.rollout.executor import LeaseHeld
from fleet.rollout.planner import Desired, PlanRefused
from fleet.rollout.selection import stage_members
from fleet.rollout.state import LEASE_TAG, Lease
from tests.fleet.rollout.conftest import MODEL, SLUG, ScriptedAnalyzer, World, advance_stage, make_world, never_repinned


def test_healthy_rollout_goes_canary_pilot_waves_done_with_soaks_respected(world: World):
    analyzer = ScriptedAnalyzer("pass")
    c = world.controller(analyzer)
    api, clock = world.api, world.clock
    c.reconcile()
    canary = world.pinned_to(world.new)
    assert canary == {world.devices[0]["uuid"], world.devices[1]["uuid"]}
    assert world.state()["status"] == "running" and world.state()["stage"] == 0
    expected = {1: 4, 2: 10, 3: 20, 4: 40}  # ceil(10/25/50/100 % of 40)
    previous = canary
    for stage, soak in enumerate([24, 48, 24, 24, 24]):
        api.devices_apply_targets()
        c.reconcile()  # the stage's devices run the release: its soak starts
        clock.advance(hours=soak - 1)
        c.reconcile()  # still soaking: nothing moves, no analysis
        assert world.state()["stage"] == stage and len(analyzer.calls) == stage
        assert world.pinned_to(world.new) == previous
        clock.advance(hours=1, minutes=1)
        c.reconcile()
        assert len(analyzer.calls) == stage + 1
        if stage + 1 in expected:
            pinned = world.pinned_to(world.new)
            assert len(pinned) == expected[stage + 1]
            assert previous <= pinned  # each stage a superset of the one before
            assert world.state()["stage"] == stage + 1
            previous = pinned
    assert world.state()["status"] == "done"
    assert world.fleet_release() == world.new["id"]
    assert all(p is None for p in world.pins().values())  # devices follow the fleet again
    pilot = analyzer.calls[1]  # upgraded devices against those still on the previous release
    assert len(pilot.devices) == 4 and len(pilot.baseline) == 36
    never_repinned(world)
    assert c.plan().actions[0].message.endswith("nothing to do")


def test_canary_over_budget_is_rolled_back_and_the_fleet_ends_where_it_started(world: World):
    before = world.pins()
    c = world.controller(ScriptedAnalyzer("fail"))
    c.reconcile()
    assert len(world.pinned_to(world.new)) == 2
    advance_stage(world, c, 24)
    st = world.state()
    assert st["status"] == "rolled_back" and "canary analysis failed" in st["reason"] and "180 > 100" in st["reason"]
    assert world.pins() == before and world.fleet_release() == world.old["id"]
    world.api.devices_apply_targets()
    assert {d["is_running__release"] for d in world.api.store.tables["device"].values()} == {world.old["id"]}
    assert not [k for k in world.api.store.tables["release_tag"].values() if k["tag_key"].startswith("edgecv.pins.")]
    world.clock.advance(days=3)
    c.reconcile()  # a rolled-back rollout stays rolled back
    assert world.pinned_to(world.new) == set()


def test_inconclusive_analysis_waits_and_never_passes(world: World):
    verdicts = iter(["inconclusive", "inconclusive", "pass"])
    analyzer = ScriptedAnalyzer(lambda req: next(verdicts))
    c = world.controller(analyzer)
    c.reconcile()
    advance_stage(world, c, 24)  # 1st analysis: inconclusive
    assert world.state()["stage"] == 0 and len(world.pinned_to(world.new)) == 2
    world.clock.advance(hours=1)
    result = c.reconcile()  # 2nd: inconclusive again, still waiting
    assert any("inconclusive" in getattr(a, "reason", "") for a in result.actions)
    assert world.state()["stage"] == 0 and len(world.pinned_to(world.new)) == 2
    c.reconcile()  # 3rd: pass
    assert world.state()["stage"] == 1 and len(world.pinned_to(world.new)) == 4
    assert len(analyzer.calls) == 3


def test_dashboard_repin_halts_and_the_device_is_never_touched_again(world: World):
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    victim = world.devices[0]
    world.api.dashboard_pin(victim["uuid"], world.old["id"])  # a person rolls one canary back
    advance_stage(world, c, 24)
    st = world.state()
    assert st["status"] == "halted" and victim["uuid"][:7] in st["reason"] and "outside the controller" in st["reason"]
    patches = world.api.count("PATCH", "device")
    for _ in range(3):
        advance_stage(world, c, 24)
    assert world.api.count("PATCH", "device") == patches  # halted: no pin touched
    assert world.pins()[victim["uuid"]] == world.old["id"]
    c.command("resume", by="oncall")
    assert world.state()["status"] == "running"
    for soak in (24, 48, 24, 24, 24):  # the canary soak counts from when its devices were seen running it
        advance_stage(world, c, soak)
    assert world.state()["status"] == "done"
    assert world.pins()[victim["uuid"]] == world.old["id"]  # still where the person put it
    assert [who for _, who in world.pin_changes()[victim["id"]]] == ["api", "dashboard"]
    never_repinned(world)


def test_fleet_repinned_in_the_dashboard_halts(world: World):
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    third = world.api.store.add_release(world.app_id, "cd" * 20)
    world.api.dashboard_pin_fleet(world.app_id, third["id"])
    advance_stage(world, c, 24)
    assert world.state()["status"] == "halted" and "fleet release changed" in world.state()["reason"]


def test_a_429_storm_slows_the_run_but_loses_nothing(world: World):
    c = world.controller(ScriptedAnalyzer("pass"), batch=2)
    c.reconcile()
    world.api.inject(status=429, retry_after=7, times=4, method="PATCH", resource="device")
    world.api.inject(status=429, retry_after=3, times=2, method="GET", resource="device")
    start = world.clock()
    advance_stage(world, c, 24)  # pilot: 2 new devices, one PATCH each with batch=2 -> 1 PATCH
    t = transport(c.sdk)
    assert t.retried == 6 and t.waited_s == 4 * 7 + 2 * 3
    assert (world.clock() - start).total_seconds() >= 24 * 3600 + 34  # the storm cost simulated time
    assert len(world.pinned_to(world.new)) == 4 and world.state()["stage"] == 1
    assert world.api.count(None, None) > 0 and sum(r.status == 429 for r in world.api.requests) == 6
    never_repinned(world)


def test_a_storm_longer_than_the_retry_budget_fails_the_pass_and_the_next_run_completes(world: World):
    c = world.controller(ScriptedAnalyzer("pass"), retry=RetryPolicy(attempts=3, backoff_s=1), batch=1)
    c.reconcile()
    world.api.inject(status=500, times=100, skip=1, method="PATCH", resource="device")  # 1st pilot PATCH passes
    with pytest.raises(BalenaUnavailable):
        advance_stage(world, c, 24)
    assert world.state()["stage"] == 1  # the stage moved, its pins are half done
    assert len(world.pinned_to(world.new)) == 3
    world.api.clear_faults()
    c.reconcile()
    assert len(world.pinned_to(world.new)) == 4
    never_repinned(world)
    lease = [t for t in world.api.store.tables["application_tag"].values() if t["tag_key"] == LEASE_TAG]
    assert lease == []  # released even by the failed pass


@pytest.mark.parametrize("case", ["failed", "missing"])
def test_a_missing_or_failed_release_is_refused_at_plan_time(api, case: str):
    world = make_world(api, new_status="failed" if case == "failed" else "success")
    if case == "missing":
        world.desired = Desired(SLUG, "9.9.9", (MODEL,), None, world.desired.policy)
    c = world.controller(ScriptedAnalyzer("pass"))
    with pytest.raises(PlanRefused) as err:
        c.plan()
    assert ("did not build successfully: abababa (failed)" if case == "failed" else "is tagged edgecv.app=9.9.9") in str(err.value)
    with pytest.raises(PlanRefused):
        c.reconcile()
    assert world.pinned_to(world.new) == set() and world.state() is None
    assert api.count("PATCH", "device") == 0


def test_a_fleet_tracking_latest_is_refused(api):
    world = make_world(api)
    api.store.tables["application"][world.app_id]["should_track_latest_release"] = True
    with pytest.raises(PlanRefused, match="tracks the latest release"):
        world.controller().plan()


def test_offline_devices_are_counted_and_pinned_when_they_come_back(world: World):
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    observed = c.observe()
    pilot = stage_members(world.desired.policy, observed.devices, f"{SLUG}:{world.new['commit']}")[1]
    late = next(d for d in pilot[2:])  # a pilot device that is not a canary
    world.api.set_online(late.uuid, False)
    advance_stage(world, c, 24)
    assert world.state()["stage"] == 1 and world.pins()[late.uuid] is None
    assert len(world.pinned_to(world.new)) == 3
    advance_stage(world, c, 48)  # soak over, but 1 of 4 is offline and none may be (int(0.1 * 4) = 0)
    plan = c.plan()
    assert world.state()["stage"] == 1
    assert any("1 of 4 device(s) offline" in getattr(a, "reason", "") for a in plan.actions)
    world.api.set_online(late.uuid, True)
    c.reconcile()
    assert world.pins()[late.uuid] == world.new["id"]  # pinned once back
    advance_stage(world, c, 0)  # all four run it now: the pilot's soak starts
    assert world.state()["stage"] == 1
    advance_stage(world, c, 48)
    assert world.state()["stage"] == 2


def test_a_configured_share_of_offline_devices_does_not_block(api):
    world = make_world(api, max_offline=0.3)
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    observed = c.observe()
    pilot = stage_members(world.desired.policy, observed.devices, f"{SLUG}:{world.new['commit']}")[1]
    world.api.set_online(pilot[3].uuid, False)
    advance_stage(world, c, 24)
    advance_stage(world, c, 48)  # 1 of 4 offline <= int(0.3 * 4): the pilot passes anyway
    assert world.state()["stage"] == 2 and world.pins()[pilot[3].uuid] is None


def test_two_concurrent_runs_only_one_acts(world: World):
    gate = threading.Event()
    # Both runs read the (absent) lease before either writes it.
    world.api.inject(status=None, gate=gate, times=2, method="GET", resource="application")
    runs = [world.controller(ScriptedAnalyzer("pass"), holder=f"run-{i}") for i in range(2)]
    outcome: dict[str, str] = {}

    def go(c) -> None:
        try:
            c.reconcile()
            outcome[c.holder] = "acted"
        except LeaseHeld as exc:
            outcome[c.holder] = f"held: {exc}"

    threads = [threading.Thread(target=go, args=(c,)) for c in runs]
    for t in threads:
        t.start()
    while any(f.times > 0 for f in world.api.faults):  # both runs are waiting at the gate
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join(30)
    assert sorted(v.split(":")[0] for v in outcome.values()) == ["acted", "held"]
    assert world.api.count("PATCH", "device") == 1 and len(world.pinned_to(world.new)) == 2
    assert sum(1 for r in world.api.requests if r.resource == "release_tag" and r.method == "POST"
               and r.body["tag_key"] == "edgecv.rollout") == 1


def test_a_lease_held_by_another_run_blocks_until_it_expires(world: World):
    other = Lease("someone-else", world.clock() + timedelta(minutes=10))
    world.api.store._insert("application_tag", {"application": world.app_id, "tag_key": LEASE_TAG,
                                                "value": other.to_tag()})
    c = world.controller(ScriptedAnalyzer("pass"))
    with pytest.raises(LeaseHeld, match="someone-else"):
        c.reconcile()
    assert world.pinned_to(world.new) == set()
    world.clock.advance(minutes=11)  # the other run died: its lease expires
    c.reconcile()
    assert len(world.pinned_to(world.new)) == 2


def test_failure_with_pause_waits_for_a_human_who_rolls_back(api):
    world = make_world(api, on_failure="pause")
    c = world.controller(ScriptedAnalyzer("fail"))
    c.reconcile()
    advance_stage(world, c, 24)
    assert world.state()["status"] == "paused" and len(world.pinned_to(world.new)) == 2
    advance_stage(world, c, 24)
    assert world.state()["status"] == "paused"
    c.command("rollback", by="alice")
    assert world.state()["status"] == "rolled_back" and world.pinned_to(world.new) == set()
    assert any("rollback by alice" in h for h in world.state()["history"])
    c.command("resume", by="alice")  # retry from the canary
    assert world.state()["status"] == "running" and world.state()["attempt"] == 2
    c.reconcile()
    assert len(world.pinned_to(world.new)) == 2


def test_promote_skips_the_rest_of_the_soak_and_is_recorded(world: World):
    analyzer = ScriptedAnalyzer("inconclusive")
    c = world.controller(analyzer)
    c.reconcile()
    world.api.devices_apply_targets()
    world.clock.advance(hours=2)
    c.command("promote", by="bob")
    assert world.state()["promoted"].startswith("0|bob|")
    c.reconcile()  # soak skipped; an inconclusive analysis is accepted for a promoted stage
    assert world.state()["stage"] == 1 and len(analyzer.calls) == 1
    assert world.state()["promoted"] is None


def test_abort_stops_where_it_is_and_resume_continues(world: World):
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    world.api.devices_apply_targets()
    c.reconcile()
    c.command("abort", by="carol")
    advance_stage(world, c, 24)
    assert world.state()["status"] == "paused" and len(world.pinned_to(world.new)) == 2
    c.command("resume", by="carol")
    c.reconcile()
    assert world.state()["stage"] == 1


def test_a_new_release_in_the_fleet_file_unwinds_the_previous_rollout(world: World):
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    advance_stage(world, c, 24)
    assert len(world.pinned_to(world.new)) == 4
    newer = world.api.store.add_release(world.app_id, "ef" * 20, tags={"edgecv.app": "1.5.0", "edgecv.model": MODEL})
    c.desired = Desired(SLUG, "1.5.0", (MODEL,), None, world.desired.policy)
    c.reconcile()
    assert world.pinned_to(world.new) == set() and world.state()["status"] == "superseded"
    c.reconcile()
    assert len(world.pinned_to(newer)) == 2
    never_repinned(world)


def test_status_reports_stages_devices_and_soak(world: World):
    from fleet.rollout.report import render_status

    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    world.api.devices_apply_targets()
    c.reconcile()
    world.clock.advance(hours=5)
    text = render_status(world.desired, c.observe(), world.clock())
    assert "rollout of abababa (attempt 1): running" in text
    assert "current, soak 19h00m left" in text
    assert "0000000 x38" in text and "abababa x2" in text
    assert "start canary: 0000000 -> abababa" in text


def run_to_done(world: World, c) -> None:
    for _ in range(12):
        world.api.devices_apply_targets()
        world.clock.advance(hours=49)
        c.reconcile()
        if world.state_of(c) in ("done", "rolled_back"):
            return
    raise AssertionError("the rollout did not finish")


def test_git_moving_on_and_back_rolls_out_again_but_a_person_moving_the_fleet_is_respected(world: World):
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    run_to_done(world, c)
    assert world.fleet_release() == world.new["id"]
    # git revert: the fleet file asks for the old release again -> a staged rollout of it
    c.desired = Desired(SLUG, "1.3.0", ("nanodet-m@0.9.0",), None, world.desired.policy)
    c.reconcile()
    assert len(world.pinned_to(world.old)) == 2
    run_to_done(world, c)
    assert world.fleet_release() == world.old["id"]
    # and forward again: the finished rollout of the new release runs once more (attempt 2)
    c.desired = world.desired
    c.reconcile()
    assert world.state()["attempt"] == 2 and len(world.pinned_to(world.new)) == 2
    run_to_done(world, c)
    # a person moves the fleet in the dashboard: left alone, reported, until `resume`
    world.api.dashboard_pin_fleet(world.app_id, world.old["id"])
    result = c.reconcile()
    assert "changed outside the controller" in result.actions[0].message
    assert world.fleet_release() == world.old["id"] and world.pinned_to(world.new) == set()
    c.command("resume", by="erin")
    c.reconcile()
    assert world.state()["attempt"] == 3 and len(world.pinned_to(world.new)) == 2


def test_a_device_without_vpn_but_with_a_heartbeat_is_pinned_and_counted_ready(world: World):
    for dev in world.devices[:2]:
        world.api.set_online(dev["uuid"], True, vpn=False)  # a firewall blocks the VPN; the API is reachable
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    assert len(world.pinned_to(world.new)) == 2
    advance_stage(world, c, 24)
    assert world.state()["stage"] == 1
