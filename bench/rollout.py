"""Rollout controller at fleet scale: API requests per reconcile pass and planning time, 10,000 devices.

    .venv/bin/python bench/rollout.py [--devices 10000] [--naive-sample 100]

A 10,000-device fleet lives in the local balena API double (fleet/local/balena_sim), driven through the real
balena-sdk. The controller is walked through canary, pilot, wave 25 % and wave 50 %; then the measured pass
pins the last wave (50 % -> 100 %: half the fleet, 5,000 devices). Reported:

- ours:  requests of that whole pass (lease, observe, bulk pins, pin record, state) and its wall time;
         planning time (the pure planner on the observed 10,000 devices, median of 5);
- naive: the per-device way: device.pin_to_release(uuid, commit) and a per-device marker tag
         (device.tags.set), measured on a sample of devices in the same run and scaled to the wave.
- full:  requests and wall time of the whole rollout, canary to done (a pass when devices run the
         release and one when each soak is over, as `apply --watch` would make).

Goals: <= 50 requests to pin the whole wave, planning <= 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fleet.local.balena_sim import BalenaDouble  # noqa: E402
from fleet.rollout.balena_client import connect  # noqa: E402
from fleet.rollout.model import PinDevices  # noqa: E402
from fleet.rollout.planner import plan  # noqa: E402
from tests.fleet.rollout.conftest import ScriptedAnalyzer, make_world  # noqa: E402


def full_rollout(api: BalenaDouble, n: int) -> tuple[float, int]:
    world = make_world(api, n=n)
    c = world.controller(ScriptedAnalyzer("pass"))
    api.reset_log()
    t = time.perf_counter()
    c.reconcile()
    for soak in (24, 48, 24, 24, 24):
        api.devices_apply_targets()
        c.reconcile()
        world.clock.advance(hours=soak, minutes=1)
        c.reconcile()
    assert world.state()["status"] == "done", world.state()
    return time.perf_counter() - t, len(api.requests)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--naive-sample", type=int, default=100)
    args = ap.parse_args()

    with BalenaDouble(first_id=10_000_000) as api:  # balena-cloud sized ids (URL length matters)
        full_s, full_n = full_rollout(api, args.devices)
    print(f"full rollout: {args.devices} devices canary -> done in {full_n} requests, {full_s:.1f} s")

    with BalenaDouble(first_id=10_000_000) as api:
        t0 = time.perf_counter()
        world = make_world(api, n=args.devices)
        c = world.controller(ScriptedAnalyzer("pass"))
        c.reconcile()  # canary
        for soak in (24, 48, 24):  # each soak over: pilot, wave 25 %, wave 50 %
            api.devices_apply_targets()
            c.reconcile()  # the stage runs the release: its soak starts
            world.clock.advance(hours=soak, minutes=1)
            c.reconcile()
        api.devices_apply_targets()
        c.reconcile()
        world.clock.advance(hours=24, minutes=1)  # wave 50 % has soaked: the next pass pins the rest
        print(f"setup: {args.devices} devices, walked to wave 50 % in {time.perf_counter() - t0:.1f} s")
        before = len(world.pinned_to(world.new))

        # planning time on the observed fleet (pure: no I/O)
        observed = c.observe()
        result = c.plan(observed)
        timings = []
        for _ in range(5):
            t = time.perf_counter()
            actions = plan(c.desired, observed, result.analysis, world.clock())
            timings.append(time.perf_counter() - t)
        wave = sum(len(a.device_ids) for a in actions if isinstance(a, PinDevices))
        plan_s = statistics.median(timings)

        # the measured pass
        api.reset_log()
        t = time.perf_counter()
        c.reconcile()
        pass_s = time.perf_counter() - t
        ours = len(api.requests)
        by_kind: dict[str, int] = {}
        for r in api.requests:
            by_kind[f"{r.method} {r.resource}"] = by_kind.get(f"{r.method} {r.resource}", 0) + 1
        pinned = len(world.pinned_to(world.new)) - before
        assert pinned == wave, (pinned, wave)

        # naive baseline on a sample of devices still following the fleet
        sdk = connect(api.url, api.key)
        sample = [d for d in world.devices if d["is_pinned_on__release"] is None][: args.naive_sample]
        if not sample:  # the last wave took every device: unpin a sample again for the baseline
            sample = world.devices[-args.naive_sample :]
            with api.lock:
                for d in sample:
                    d["is_pinned_on__release"] = None
        api.reset_log()
        t = time.perf_counter()
        for d in sample:
            sdk.models.device.pin_to_release(d["uuid"], world.new["commit"])
            sdk.models.device.tags.set(d["uuid"], "edgecv.pinned", world.new["commit"])
        naive_s = (time.perf_counter() - t) / len(sample) * wave
        naive = len(api.requests) / len(sample) * wave

    print(f"\nwave pinned in the measured pass: {wave} devices (of {args.devices})")
    print(f"ours : {ours:6d} requests, pass {pass_s:6.2f} s   ({', '.join(f'{k} x{v}' for k, v in sorted(by_kind.items()))})")
    print(f"naive: {naive:6.0f} requests, ~{naive_s:5.1f} s   (per device: {naive / wave:.1f} requests; "
          f"measured on {len(sample)} devices, scaled to the wave)")
    print(f"ratio: {naive / ours:.0f}x fewer requests, {naive_s / pass_s:.0f}x less time than the naive baseline")
    print(f"planning: {plan_s * 1000:.0f} ms for {args.devices} devices (median of 5)")
    print(f"goals: requests <= 50: {'met' if ours <= 50 else 'MISSED'}; planning <= 1 s: "
          f"{'met' if plan_s <= 1.0 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
