"""A fleet in the balena API double, a simulated clock, and a controller driving it through the real SDK."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from fleet.repo import REPO_ROOT
from fleet.rollout.analysis import AnalysisRequest, AnalysisResult, CheckResult
from fleet.rollout.balena_client import RetryPolicy, connect
from fleet.rollout.controller import Controller
from fleet.rollout.planner import Desired
from fleet.spec.fleetspec import APP_TAG, MODEL_TAG, RolloutPolicy
from tests.support.balena_double import BalenaDouble

SLUG = "acme/edgecv-orin"
MODEL = "nanodet-m@1.0.0"


class SimClock:
    def __init__(self, start: datetime = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)):
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw: float) -> None:
        self.t += timedelta(**kw)

    def sleep(self, seconds: float) -> None:  # retries wait in simulated time
        self.t += timedelta(seconds=seconds)


class ScriptedAnalyzer:
    """Stands in for Prometheus in the scenario tests: a verdict per stage (the real queries are tested
    against a real Prometheus in test_analysis_prometheus.py)."""

    def __init__(self, verdict: Callable[[AnalysisRequest], str] | str = "pass"):
        self.verdict = verdict if callable(verdict) else (lambda req, v=verdict: v)
        self.calls: list[AnalysisRequest] = []

    def run(self, req: AnalysisRequest, at: datetime) -> AnalysisResult:
        self.calls.append(req)
        v = self.verdict(req)
        check = CheckResult("inference_p95_ms", v, 40.0 if v == "pass" else 180.0, 41.0, 500.0,
                            {"pass": "40 <= 100", "fail": "180 > 100", "inconclusive": "3 samples < 100"}[v])
        return AnalysisResult(req.stage, v, (check,), at, len(req.devices), len(req.baseline))


def policy(**over: object) -> RolloutPolicy:
    data = {"canary": {"tag": {"key": "edgecv.canary", "value": "true"}, "max_devices": 2, "soak": "24h"},
            "pilot": {"percent": 10, "soak": "48h"},
            "waves": [{"percent": 25, "soak": "24h"}, {"percent": 50, "soak": "24h"}, {"percent": 100, "soak": "24h"}]}
    data.update(over)
    return RolloutPolicy.model_validate(data)


@dataclass
class World:
    api: BalenaDouble
    clock: SimClock
    app_id: int
    old: dict  # the release the fleet runs
    new: dict  # the release the fleet file asks for
    devices: list[dict]
    desired: Desired
    sdks: list = field(default_factory=list)

    def controller(self, analyzer: object | None = None, retry: RetryPolicy | None = None, **kw: object) -> Controller:
        sdk = connect(self.api.url, self.api.key, retry or RetryPolicy(attempts=5, backoff_s=1.0),
                      sleep=self.clock.sleep)
        self.sdks.append(sdk)
        kw.setdefault("clock", self.clock)
        return Controller(sdk, self.desired, analyzer, **kw)  # type: ignore[arg-type]

    def pins(self) -> dict[str, int | None]:
        with self.api.lock:
            return {d["uuid"]: d["is_pinned_on__release"] for d in self.api.store.tables["device"].values()}

    def pinned_to(self, release: dict) -> set[str]:
        return {u for u, p in self.pins().items() if p == release["id"]}

    def fleet_release(self) -> int | None:
        return self.api.store.tables["application"][self.app_id]["should_be_running__release"]

    def state(self) -> dict | None:
        import json

        with self.api.lock:
            for t in self.api.store.tables["release_tag"].values():
                if t["release"] == self.new["id"] and t["tag_key"] == "edgecv.rollout":
                    return json.loads(t["value"])
        return None

    def state_of(self, c: Controller) -> str | None:
        """Status of the rollout of the release the controller `c` is asked for."""
        import json

        target = next(r for r in self.api.store.tables["release"].values()
                      if any(t["release"] == r["id"] and t["tag_key"] == "edgecv.app" and t["value"] == c.desired.app
                             for t in self.api.store.tables["release_tag"].values()))
        for t in self.api.store.tables["release_tag"].values():
            if t["release"] == target["id"] and t["tag_key"] == "edgecv.rollout":
                return json.loads(t["value"])["status"]
        return None

    def pin_changes(self) -> dict[int, list[tuple[int | None, str]]]:
        return self.api.store.pin_history


def make_world(api: BalenaDouble, n: int = 40, canaries: int = 2, offline: tuple[int, ...] = (),
               new_status: str = "success", uuids: list[str] | None = None, slug: str = SLUG,
               **policy_over: object) -> World:
    s = api.store
    app = s.add_application(slug)
    old = s.add_release(app["id"], "0" * 39 + "1", tags={APP_TAG: "1.3.0", MODEL_TAG: "nanodet-m@0.9.0"})
    s.tables["application"][app["id"]]["should_be_running__release"] = old["id"]
    new = s.add_release(app["id"], "ab" * 20, status=new_status, tags={APP_TAG: "1.4.0", MODEL_TAG: MODEL})
    devices = []
    uuids = uuids or [f"{i + 1:032x}" for i in range(n)]
    for i, uuid in enumerate(uuids):
        tags = {"edgecv.canary": "true"} if i < canaries else {}
        devices.append(s.add_device(app["id"], uuid, running=old["id"], online=i not in offline,
                                    tags=tags, device_name=f"orin-{i:03d}"))
    desired = Desired(slug, "1.4.0", (MODEL,), None, policy(**policy_over))
    return World(api, SimClock(), app["id"], old, new, devices, desired)


def fleet_repo(root: Path, app: str = "1.4.0", slug: str = SLUG, **rollout: object) -> Path:
    """A repository with fleets/<fleet>.yaml and the model manifest it names (a copy of nanodet-m's,
    with name and version fixed and a remote artifact, so it does not depend on the bundled file)."""
    manifest = yaml.safe_load((REPO_ROOT / "models/nanodet-m/manifest.yaml").read_text())
    manifest.update(name="nanodet-m", version="1.0.0", gate_report=None)
    manifest["artifact"]["uri"] = "s3://edgecv-models/nanodet-m/1.0.0/model.onnx"
    (root / "models/nanodet-m").mkdir(parents=True, exist_ok=True)
    (root / "models/nanodet-m/manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    fleet = {"kind": "fleet", "fleet": slug, "release": {"app": app, "models": ["models/nanodet-m/manifest.yaml"]},
             "rollout": {"canary": {"tag": {"key": "edgecv.canary", "value": "true"}}, **rollout}}
    (root / "fleets").mkdir(exist_ok=True)
    path = root / f"fleets/{slug.split('/')[-1]}.yaml"
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    return path


@pytest.fixture
def api():
    with BalenaDouble() as double:
        yield double


@pytest.fixture
def world(api: BalenaDouble) -> World:
    return make_world(api)


def advance_stage(world: World, c: Controller, hours: float) -> None:
    """Devices update, a pass sees them run the release (as `apply --watch` would), the soak passes, a pass."""
    world.api.devices_apply_targets()
    c.reconcile()
    world.clock.advance(hours=hours, minutes=1)
    world.api.devices_apply_targets()
    c.reconcile()


def never_repinned(world: World) -> None:
    """The controller never moved a device straight from one release to another: between two pins
    there is always an unpin (None = follow the fleet), i.e. no device is pinned twice within a rollout."""
    for dev_id, changes in world.pin_changes().items():
        ours = [rel for rel, who in changes if who == "api"]
        for a, b in zip(ours, ours[1:], strict=False):
            assert a is None or b is None, f"device {dev_id} pinned to {a} then to {b}"


def ranked_before(world: World, than: list[str], count: int, prefix: str = "f") -> list[str]:
    """New device uuids that the rollout's ranking puts ahead of every device in `than`."""
    from fleet.rollout.selection import rank

    key = f"{world.desired.slug}:{world.new['commit']}"
    bar = min(rank(key, u) for u in than)
    out, i = [], 0
    while len(out) < count:
        u = f"{prefix}{i:031x}"
        if rank(key, u) < bar:
            out.append(u)
        i += 1
    return out
