"""A real `edgecv rollout apply` process killed (SIGKILL) between two pins; the next run resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleet.repo import REPO_ROOT
from fleet.rollout.state import decode_ids
from tests.fleet.rollout.conftest import ScriptedAnalyzer, World, fleet_repo


@pytest.mark.parametrize("held_request", ["reaches the API", "is lost"])
def test_killed_between_two_pins_resumes_with_no_device_pinned_twice(world: World, tmp_path: Path,
                                                                     held_request: str):
    api = world.api
    fleet_file = fleet_repo(tmp_path)
    # The second pin request (batch size 1: one device per PATCH) is held until the process is dead.
    fault = api.inject(status=None, gate=threading.Event(), skip=1, method="PATCH", resource="device")
    env = {**os.environ, "BALENA_API_KEY": api.key, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli", "rollout", "--api-url", api.url, "--batch-size", "1",
                             "apply", str(fleet_file)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while fault.times > 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fault.times == 0, proc.stdout.read().decode() if proc.poll() is not None else "no second pin"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    if held_request == "is lost":
        fault.status = 503
    fault.gate.set()
    time.sleep(0.2)
    canary = {world.devices[0]["uuid"], world.devices[1]["uuid"]}
    pinned = world.pinned_to(world.new)
    assert len(pinned) == (2 if held_request == "reaches the API" else 1) and pinned <= canary
    assert world.state()["status"] == "running"

    # The killed run's lease is still there: the next run takes over once it has expired (15 min).
    later = world.controller(ScriptedAnalyzer("pass"), clock=lambda: datetime.now(UTC) + timedelta(minutes=16))
    result = later.reconcile()
    assert world.pinned_to(world.new) == canary
    assert world.state()["stage"] == 0
    kinds = {type(a).__name__ for a in result.actions}
    assert "AdoptPins" in kinds  # pinned by the killed run, recorded now
    recorded = set()
    for t in api.store.tables["release_tag"].values():
        if t["release"] == world.new["id"] and t["tag_key"].startswith("edgecv.pins."):
            recorded |= decode_ids(t["value"])
    assert recorded == {d["id"] for d in world.devices[:2]}
    for dev in world.devices[:2]:  # each canary pinned once, to the new release, by the API
        assert [rel for rel, who in world.pin_changes()[dev["id"]]] == [world.new["id"]]
    assert all(d["id"] not in world.pin_changes() for d in world.devices[2:])
