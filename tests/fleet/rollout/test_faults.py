"""Thirteen faults found by driving the controller as an adversarial operator would (issue 15): a rollout
never fights a person, never promotes a regression, and every fault leaves a recourse. Each test drives the
real SDK against the API double over simulated time."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fleet.cli import main
from fleet.local.procs import free_port
from fleet.repo import REPO_ROOT
from fleet.rollout.analysis import AnalysisRequest, Analyzer, Prometheus
from fleet.rollout.balena_client import BalenaUnavailable
from fleet.rollout.planner import Desired
from fleet.rollout.report import render_plan, render_status
from fleet.rollout.state import STATE_TAG
from fleet.spec.fleetspec import Analysis
from fleet.spec.manifest import parse_manifest
from tests.fleet.rollout.conftest import (
    MODEL,
    SLUG,
    ScriptedAnalyzer,
    World,
    advance_stage,
    fleet_repo,
    make_world,
    never_repinned,
    ranked_before,
)
from tests.support.balena_double import BalenaDouble

pytestmark = pytest.mark.faults


def by_api(world: World, dev: dict) -> list:
    return [rel for rel, who in world.pin_changes().get(dev["id"], []) if who == "api"]


# 1 ------------------------------------------------------------------------------------------------------


def test_a_device_a_person_set_to_follow_the_fleet_is_never_pinned_again_after_resume(world: World):
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    victim = world.devices[0]
    world.api.dashboard_pin(victim["uuid"], None)  # "follow the fleet", from the dashboard
    advance_stage(world, c, 24)
    assert world.state()["status"] == "halted"
    c.command("resume", by="oncall")
    for soak in (0, 24, 48, 24, 24, 24):
        advance_stage(world, c, soak)
    assert world.state()["status"] == "done"
    assert world.pin_changes()[victim["id"]] == [(world.new["id"], "api"), (None, "dashboard")]
    never_repinned(world)


# 2 ------------------------------------------------------------------------------------------------------


def test_a_pin_a_person_made_to_the_target_is_never_undone_by_a_rollback(world: World):
    c = world.controller(ScriptedAnalyzer(lambda req: "fail" if req.stage == "wave3" else "pass"))
    lab = world.devices[-1]
    world.api.dashboard_pin(lab["uuid"], world.new["id"])  # a lab unit, before its stage
    c.reconcile()
    for soak in (24, 48, 24, 24, 24):
        advance_stage(world, c, soak)
    assert world.state()["status"] == "rolled_back"
    assert world.pins()[lab["uuid"]] == world.new["id"] and by_api(world, lab) == []
    assert len(world.pinned_to(world.new)) == 1


# 3 ------------------------------------------------------------------------------------------------------


def test_devices_pinned_by_a_run_that_died_before_recording_are_adopted_even_after_the_fleet_changed(world: World):
    c = world.controller(ScriptedAnalyzer(lambda req: "fail" if req.stage == "pilot" else "pass"))
    c.reconcile()
    world.api.devices_apply_targets()
    c.reconcile()
    world.clock.advance(hours=24, minutes=1)
    # every reply to the pilot's PATCH is lost: the devices are pinned, the run gives up before recording them
    world.api.inject(status=503, after=True, times=100, method="PATCH", resource="device")
    with pytest.raises(BalenaUnavailable):
        c.reconcile()
    world.api.clear_faults()
    stranded = world.pinned_to(world.new) - {d["uuid"] for d in world.devices[:2]}
    assert len(stranded) == 2
    # new devices are provisioned that rank ahead of them: the pilot's selection moves
    for u in ranked_before(world, sorted(stranded), 6):
        world.api.store.add_device(world.app_id, u, running=world.old["id"])
    advance_stage(world, c, 0)  # the next run settles what the dead one pinned, and pins the pilot's newcomers
    advance_stage(world, c, 48)
    assert world.state()["status"] == "rolled_back"
    assert world.pinned_to(world.new) == set()  # nothing stranded on the rolled-back release


# 4 ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recourse", ["apply", "rollback", "abort"])
def test_an_invalidated_target_can_always_be_unwound(world: World, recourse: str):
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    advance_stage(world, c, 24)
    assert len(world.pinned_to(world.new)) == 4
    world.api.store.update("release", [world.new], {"is_invalidated": True}, who="dashboard")
    assert "invalidated" in render_status(world.desired, c.observe(), world.clock())
    if recourse == "apply":
        c.reconcile()
    else:
        c.command(recourse, by="oncall")
        c.reconcile()
    assert world.pinned_to(world.new) == set()
    assert world.state()["status"] == "rolled_back" and "invalidated" in world.state()["reason"] + "".join(
        world.state()["history"])


# 5 ------------------------------------------------------------------------------------------------------


class StubProm:
    """Answers the default checks' queries by metric: the upgraded devices regressed, the baseline is silent."""

    def __init__(self, baseline: set[str]):
        self.baseline = baseline

    def scalar(self, promql: str, at: datetime | None = None) -> float | None:
        if any(u in promql for u in self.baseline):
            return None
        for metric, value in (("edgecv_triton_errors", 0.0), ("histogram_quantile", 40.0),
                              ("increase(edgecv_stage_latency_seconds_count", 5000.0), ("count_over_time", 100.0),
                              ("edgecv_camera_fps", 2.0), ("edgecv_mean_confidence", 0.1),
                              ("edgecv_app_starts", 0.0), ("edgecv_drift_score", 0.05), ("up{", 1.0)):
            if metric in promql:
                return value
        raise AssertionError(promql)


def _analyzer(baseline: set[str]) -> Analyzer:
    data = yaml.safe_load((REPO_ROOT / "models/nanodet-m/manifest.yaml").read_text())
    data["latency_budget_ms"] = {"inference": 100.0}
    return Analyzer(StubProm(baseline), Analysis(window="1h", min_samples=100), [parse_manifest(data)])  # type: ignore[arg-type]


def test_a_baseline_without_data_makes_a_comparison_inconclusive_never_pass():
    base = ("b" * 32, "c" * 32)
    result = _analyzer(set(base)).run(AnalysisRequest("pilot", ("a" * 32,), base), datetime.now(UTC))
    by = {ch.name: ch for ch in result.checks}
    assert result.verdict == "inconclusive", result.summary()
    assert by["fps"].verdict == by["mean_confidence"].verdict == "inconclusive"
    assert "baseline" in by["fps"].detail
    # the last wave has no baseline devices at all: the ratios are skipped, the absolute limits still hold
    last = _analyzer(set()).run(AnalysisRequest("wave3", ("a" * 32,), ()), datetime.now(UTC))
    assert last.verdict == "pass", last.summary()


# 6 ------------------------------------------------------------------------------------------------------


def test_the_canary_is_chosen_once_and_keeps_its_cap(world: World):
    analyzer = ScriptedAnalyzer("pass")
    c = world.controller(analyzer)
    c.reconcile()
    world.api.devices_apply_targets()
    c.reconcile()
    canary = world.pinned_to(world.new)
    for u in ranked_before(world, sorted(canary), 2):  # tagged canary during the soak, ranked first
        world.api.store.add_device(world.app_id, u, running=world.old["id"], tags={"edgecv.canary": "true"})
    world.clock.advance(hours=12)
    c.reconcile()
    assert world.pinned_to(world.new) == canary
    world.api.devices_apply_targets()
    world.clock.advance(hours=12, minutes=1)
    c.reconcile()
    assert set(analyzer.calls[0].devices) == {d["uuid"] for d in world.devices[:2]} == canary


# 7 ------------------------------------------------------------------------------------------------------


def test_one_fleets_error_does_not_stop_the_other_fleets(api: BalenaDouble, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BALENA_API_KEY", api.key)
    broken, fine = make_world(api, slug="acme/one"), make_world(api, slug="acme/two")
    api.store._insert("release_tag", {"release": broken.new["id"], "tag_key": STATE_TAG, "value": '{"rollout_id": "ab'})
    files = [fleet_repo(tmp_path, slug="acme/one"), fleet_repo(tmp_path, slug="acme/two")]
    result = CliRunner().invoke(main, ["rollout", "--api-url", api.url, "apply", *map(str, files)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "one.yaml" in result.output and "rollout state" in result.output
    assert len(fine.pinned_to(fine.new)) == 2  # the second fleet was reconciled


def test_a_prometheus_reply_without_a_result_is_inconclusive():
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"status": "success", "data": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        prom = Prometheus(f"http://127.0.0.1:{server.server_port}")
        result = Analyzer(prom, Analysis(window="1h"), []).run(AnalysisRequest("canary", ("a" * 32,), ()),
                                                                datetime.now(UTC))
        assert result.verdict == "inconclusive" and all("result" in ch.detail for ch in result.checks)
    finally:
        server.shutdown()
        server.server_close()


# 8 ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", ["running", "failed"])
def test_a_new_build_that_is_unfinished_or_failed_does_not_freeze_the_previous_rollout(world: World, build: str):
    c = world.controller(ScriptedAnalyzer("fail"))
    c.reconcile()
    assert len(world.pinned_to(world.new)) == 2
    world.api.store.add_release(world.app_id, "ef" * 20, status=build, tags={"edgecv.app": "1.5.0",
                                                                             "edgecv.model": MODEL})
    c.desired = Desired(SLUG, "1.5.0", (MODEL,), None, world.desired.policy)
    world.clock.advance(hours=25)
    try:
        c.reconcile()
    except Exception as exc:  # noqa: BLE001 - a refusal is fine, once the previous rollout is unwound
        assert "1.5.0" in str(exc)
    assert world.pinned_to(world.new) == set()
    assert world.state()["status"] in ("superseded", "rolled_back")


# 9 ------------------------------------------------------------------------------------------------------


def test_a_device_that_rejects_the_release_counts_as_a_failure(world: World):
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    world.api.reject_release(world.devices[0]["uuid"], world.new["id"])
    advance_stage(world, c, 24)
    st = world.state()
    assert st["status"] == "rolled_back" and "rejected" in st["reason"], st
    assert world.pinned_to(world.new) == set()


def test_devices_that_never_come_back_end_in_a_decision_for_a_person(world: World):
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    world.api.set_online(world.devices[1]["uuid"], False)  # pinned, but never seen running it
    advance_stage(world, c, 24)
    for _ in range(4):
        advance_stage(world, c, 24)
    st = world.state()
    assert st["status"] == "paused" and "promote" in st["reason"] and "rollback" in st["reason"], st
    c.command("promote", by="oncall")
    advance_stage(world, c, 0)
    assert world.state()["stage"] == 1 and world.state()["status"] == "running"


def test_the_soak_counts_from_when_the_devices_run_the_release(world: World):
    analyzer = ScriptedAnalyzer("pass")
    c = world.controller(analyzer)
    c.reconcile()
    world.clock.advance(hours=20)  # the canaries are slow to update
    world.api.devices_apply_targets()
    c.reconcile()
    world.clock.advance(hours=5)  # 25 h after the stage started, 5 h after they run it
    c.reconcile()
    assert analyzer.calls == [] and world.state()["stage"] == 0
    world.clock.advance(hours=19, minutes=1)
    c.reconcile()
    assert len(analyzer.calls) == 1 and world.state()["stage"] == 1


# 10 -----------------------------------------------------------------------------------------------------


def test_a_lost_reply_to_the_lease_post_does_not_lock_the_run_out(world: World):
    world.api.inject(status=503, after=True, times=1, method="POST", resource="application_tag")
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    assert len(world.pinned_to(world.new)) == 2


# 11 -----------------------------------------------------------------------------------------------------


def test_the_rollback_message_names_the_release_the_devices_return_to(world: World):
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    third = world.api.store.add_release(world.app_id, "cd" * 20)
    world.api.dashboard_pin_fleet(world.app_id, third["id"])
    c.reconcile()
    assert world.state()["status"] == "halted"
    result = c.command("rollback", by="oncall")
    said = " ".join(result.done) + " " + world.state()["history"][-1]
    assert "cdcdcdc" in said and "rolled back to 0000000" not in said, said


# 12 -----------------------------------------------------------------------------------------------------


def test_pin_requests_stay_under_the_url_limit_and_a_413_or_414_is_split(api: BalenaDouble):
    big = BalenaDouble(first_id=10_000_000).start()  # balena-cloud sized ids
    try:
        world = make_world(big, n=2500, pilot={"percent": 50, "soak": "48h"},
                           waves=[{"percent": 100, "soak": "24h"}])
        c = world.controller(ScriptedAnalyzer("pass"), batch=1000)
        c.reconcile()
        big.inject(status=414, times=1, method="PATCH", resource="device")  # a proxy with a lower limit
        advance_stage(world, c, 24)
        assert len(world.pinned_to(world.new)) == 1250
        assert max(len(r.path) for r in big.requests) < 8192
        assert sum(r.status == 414 for r in big.requests) == 1
    finally:
        big.stop()


# 13 -----------------------------------------------------------------------------------------------------


def test_the_pr_comment_shows_the_schedule_and_gates_and_stays_under_githubs_limit(api: BalenaDouble):
    world = make_world(api, n=400, pilot={"percent": 50, "soak": "48h"}, waves=[{"percent": 100, "soak": "24h"}])
    c = world.controller(ScriptedAnalyzer("pass"))
    plan = c.plan()
    text = render_plan(world.desired, plan.observed, plan.actions, markdown=True)
    assert "0000000 → abababa" in text
    for row in ("| canary | - | 2 |", "| pilot | 50% | 200 |", "| wave1 | 100% | 400 |"):
        assert row in text, text
    assert "inference_p95_ms" in text and "| state |" not in text
    c.reconcile()
    advance_stage(world, c, 24)
    for uuid in list(world.pinned_to(world.new))[:300]:  # a person rolls the pilot back by hand
        world.api.dashboard_pin(uuid, None)
    plan = c.plan()
    text = render_plan(world.desired, plan.observed, plan.actions, markdown=True)
    assert "200 device(s)" in text and text.count("outside the controller") <= 6, text
    huge = render_plan(world.desired, plan.observed, plan.actions * 2000, markdown=True)
    assert len(huge) <= 65_536


def test_status_marks_no_stage_next_while_paused_and_renders_as_markdown(world: World):
    c = world.controller(ScriptedAnalyzer("pass"))
    c.reconcile()
    c.command("abort", by="oncall")
    text = render_status(world.desired, c.observe(), world.clock(), markdown=True)
    assert "next" not in text.split("| stage |")[1]
    assert "\n\n| stage |" in text and text.startswith("### ")
