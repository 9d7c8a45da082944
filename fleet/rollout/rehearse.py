"""`edgecv rollout rehearse`: try a fleet file's real policy on a simulated fleet before merging it.

The fleet lives in the local balena API double (fleet.local.balena_sim), driven by the real controller
through the real balena-sdk. The simulated devices report the app's metrics into a real Prometheus by
remote-write at simulated timestamps (a scrape would stamp them with the wall clock: see
fleet.local.remote_write), and each analysis runs the fleet file's own PromQL checks at simulated time.
Time is compressed: the clock jumps to the end of each soak, so a 48 h soak takes seconds. The timeline
says which devices ran what when, each analysis and its verdict, and the rollback.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleet.local.balena_sim import BalenaDouble
from fleet.local.prometheus import prometheus
from fleet.local.remote_write import RemoteWriter, Series, labels
from fleet.rollout.analysis import AnalysisRequest, AnalysisResult, Analyzer, Prometheus, Verdict
from fleet.rollout.balena_client import RetryPolicy, connect
from fleet.rollout.controller import Controller
from fleet.rollout.model import PinDevices, PinFleet, UnpinDevices, Wait
from fleet.rollout.planner import Desired
from fleet.rollout.selection import stages
from fleet.rollout.state import Status, read_state
from fleet.spec.fleetspec import APP_TAG, MODEL_TAG, load_fleet

# app/metrics.py's buckets (the control plane does not import the app; a test keeps them equal), so
# histogram_quantile reads what a device would report
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.213, 0.3,
                   0.5, 1.0, 2.5)
HEALTHY = {"inference_ms": 40.0, "fps": 15.0, "confidence": 0.62, "psi": 0.05, "error_ratio": 0.0, "restarts": 0.0}
ALIASES = {"inference_p95_ms": "inference_ms", "mean_confidence": "confidence", "drift_psi": "psi",
           "triton_error_ratio": "error_ratio", "errors": "error_ratio"}
STEPS_PER_WINDOW = 12  # samples a device writes per analysis window (the default fps check wants 10 scrapes)
IDLE_PASSES = 48  # passes in a row that change nothing (e.g. an analysis that stays inconclusive): stop


class RehearsalError(ValueError):
    """A rehearsal option that cannot be acted on (named, with what is accepted)."""


@dataclass(frozen=True)
class Regression:
    """From `stage` on, devices running the new release report `metric` = `value`."""

    stage: str
    metric: str
    value: float

    @classmethod
    def parse(cls, text: str, stage_names: Sequence[str]) -> Regression:
        stage, _, rest = text.partition(":")
        metric, eq, value = rest.partition("=")
        metric = ALIASES.get(metric.strip(), metric.strip())
        if not eq or stage not in stage_names or metric not in HEALTHY:
            raise RehearsalError(f"--regression {text!r}: expected STAGE:METRIC=VALUE with STAGE one of "
                                 f"{', '.join(stage_names)} and METRIC one of {', '.join(HEALTHY)}")
        try:
            return cls(stage, metric, float(value))
        except ValueError as exc:
            raise RehearsalError(f"--regression {text!r}: {value!r} is not a number") from exc


class SimClock:
    def __init__(self, start: datetime):
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw: float) -> None:
        self.t += timedelta(**kw)

    def sleep(self, seconds: float) -> None:  # API retries wait in simulated time
        self.t += timedelta(seconds=seconds)


class SimTimePrometheus(Prometheus):
    """The analysis's instant queries, evaluated at the simulated now instead of Prometheus' own."""

    def __init__(self, base_url: str, clock: Callable[[], datetime]):
        super().__init__(base_url)
        self.clock = clock

    def scalar(self, promql: str, at: datetime | None = None) -> float | None:
        return super().scalar(promql, at or self.clock())


class ToldAnalyzer:
    """The fleet file's analyzer, whose verdict goes on the timeline before the controller acts on it."""

    def __init__(self, inner: Analyzer, say: Callable[[str], None]):
        self.inner, self.say = inner, say

    def run(self, req: AnalysisRequest, at: datetime) -> AnalysisResult:
        result = self.inner.run(req, at)
        self.say(_analysis_line(result))
        return result


class SimDevices:
    """What each simulated device reports: healthy values, or a regression on the new release from the
    stage it joined on. Counters keep running between writes, as a device's would."""

    def __init__(self, api: BalenaDouble, target_id: int, regressions: Sequence[Regression],
                 stage_index: dict[str, int]):
        self.api, self.target_id, self.regressions, self.stage_index = api, target_id, regressions, stage_index
        self.stage_of: dict[int, int] = {}  # device id -> index of the stage it was pinned in
        self.counters: dict[str, list[float]] = {}  # uuid -> buckets..., count, sum, errors, restarts
        self.encoded: dict[str, list[bytes]] = {}

    def values(self, dev: dict) -> dict[str, float]:
        vals = dict(HEALTHY)
        joined = self.stage_of.get(dev["id"])
        if dev["is_running__release"] == self.target_id and joined is not None:
            for r in self.regressions:
                if joined >= self.stage_index[r.stage]:
                    vals[r.metric] = r.value
        return vals

    def _labels(self, uuid: str) -> list[bytes]:
        """Every series a device writes, its labels encoded once."""
        got = self.encoded.get(uuid)
        if got is None:
            base = {"job": "edgecv", "instance": uuid, "device": uuid}
            inf = {**base, "stage": "inference", "__name__": "edgecv_stage_latency_seconds_bucket"}
            got = [labels({**inf, "le": repr(le)}) for le in LATENCY_BUCKETS] + [labels({**inf, "le": "+Inf"})] + [
                labels({**base, "stage": "inference", "__name__": "edgecv_stage_latency_seconds_count"}),
                labels({**base, "stage": "inference", "__name__": "edgecv_stage_latency_seconds_sum"}),
                labels({**base, "__name__": "edgecv_triton_errors_total"}),
                labels({**base, "__name__": "edgecv_app_starts_total"}),
                labels({**base, "camera": "cam1", "__name__": "edgecv_camera_fps"}),
                labels({**base, "__name__": "edgecv_mean_confidence"}),
                labels({**base, "kind": "psi", "__name__": "edgecv_drift_score"}),
                labels({**base, "__name__": "up"}),
            ]
            self.encoded[uuid] = got
        return got

    def step(self, ts_ms: int, step_s: float) -> list[Series]:
        """One sample of every series of every device with a heartbeat, at `ts_ms`."""
        out: list[Series] = []
        with self.api.lock:
            devices = [dict(d) for d in self.api.store.tables["device"].values()
                       if d["api_heartbeat_state"] == "online"]
        k = len(LATENCY_BUCKETS)
        for dev in devices:
            v, uuid = self.values(dev), dev["uuid"]
            c = self.counters.setdefault(uuid, [0.0] * (k + 4))  # buckets, count, sum, errors, restarts
            n = v["fps"] * step_s  # one inference a frame
            seconds = v["inference_ms"] / 1000
            for i, le in enumerate(LATENCY_BUCKETS):
                if seconds <= le:
                    c[i] += n
            c[k] += n
            c[k + 1] += n * seconds
            c[k + 2] += n * v["error_ratio"]
            c[k + 3] += v["restarts"] / STEPS_PER_WINDOW
            values = [*c[:k], c[k], c[k], c[k + 1], c[k + 2], 1.0 + c[k + 3], v["fps"], v["confidence"], v["psi"], 1.0]
            out += [(blob, [(ts_ms, x)]) for blob, x in zip(self._labels(uuid), values, strict=True)]
        return out


class MetricsFeed:
    """Writes the devices' samples up to the simulated now, at most one analysis window back (what an
    analysis can read), one time step per push so every sample is newer than what Prometheus holds."""

    def __init__(self, writer: RemoteWriter, devices: SimDevices, window: timedelta):
        self.writer, self.devices, self.window = writer, devices, window
        self.step = max(window / STEPS_PER_WINDOW, timedelta(seconds=15))
        self.last: datetime | None = None

    def until(self, now: datetime) -> None:
        t = now - self.window if self.last is None or self.last < now - self.window else self.last
        while t + self.step <= now:
            t += self.step
            self.writer.push(self.devices.step(int(t.timestamp() * 1000), self.step.total_seconds()))
        self.last = t


def _elapsed(start: datetime, now: datetime) -> str:
    s = int((now - start).total_seconds())
    return f"+{s // 86400}d{s % 86400 // 3600:02d}h{s % 3600 // 60:02d}m"


@dataclass
class Outcome:
    status: str
    reason: str | None
    timeline: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    simulated: timedelta = timedelta()
    api_requests: int = 0
    samples: int = 0


def _uuid(i: int) -> str:
    return hashlib.sha256(f"rehearsal-device-{i}".encode()).hexdigest()[:32]


def _seed(api: BalenaDouble, desired: Desired, n: int, offline: float, rng: random.Random) -> tuple[dict, dict]:
    s = api.store
    app = s.add_application(desired.slug)
    old = s.add_release(app["id"], hashlib.sha1(b"the release the fleet runs").hexdigest(),
                        tags={APP_TAG: "previous", MODEL_TAG: "previous"})
    commit = (desired.commit or "") + hashlib.sha1(b"the release the fleet file asks for").hexdigest()
    new = s.add_release(app["id"], commit[:40], tags={APP_TAG: desired.app, MODEL_TAG: ",".join(desired.models)})
    s.tables["application"][app["id"]]["should_be_running__release"] = old["id"]
    canary = desired.policy.canary
    uuids = list(canary.devices or [])
    uuids += [_uuid(i) for i in range(n - len(uuids))]
    tagged = 0 if canary.devices else canary.max_devices + 1  # one more than the cap: the choice matters
    for i, uuid in enumerate(uuids[:n]):
        tags = {canary.tag.key: canary.tag.value or "true"} if canary.tag and i < tagged else {}
        up = rng.random() >= offline
        s.add_device(app["id"], uuid, running=old["id"], online=up, tags=tags, device_name=f"sim-{i:05d}")
    return old, new


def rehearse(fleet_file: Path, devices: int = 100, regressions: Sequence[str] = (), offline: float = 0.0,
             human_pins: Sequence[str] = (), out: Callable[[str], None] = print, max_days: float = 90,
             seed: int = 15) -> Outcome:
    """Run the fleet file's rollout policy on `devices` simulated devices; `out` gets the timeline as it goes."""
    if devices < 1:
        raise RehearsalError("--devices must be at least 1")
    if not 0 <= offline < 1:
        raise RehearsalError(f"--offline {offline}: a share of the devices, from 0 up to (not including) 1")
    spec, manifests = load_fleet(fleet_file)
    desired = Desired.from_spec(spec, manifests)
    names = [st.name for st in stages(desired.policy)]
    regs = [Regression.parse(r, names) for r in regressions]
    bad = [h for h in human_pins if h not in names]
    if bad:
        raise RehearsalError(f"--human-pin {bad[0]!r}: expected a stage, one of {', '.join(names)}")
    rng = random.Random(seed)
    wall = time.perf_counter()
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    clock = SimClock(start)
    timeline: list[str] = []

    def say(what: str) -> None:
        line = f"{_elapsed(start, clock())}  {what}"
        timeline.append(line)
        out(line)

    svc = prometheus({"global": {"scrape_interval": "1m"}}, remote_write_receiver=True)
    with BalenaDouble(key=secrets.token_hex(16)) as api:
        try:
            svc.start()
            old, new = _seed(api, desired, devices, offline, rng)
            short = {old["id"]: old["commit"][:7], new["id"]: new["commit"][:7], None: "none"}
            sim = SimDevices(api, new["id"], regs, {n: i for i, n in enumerate(names)})
            feed = MetricsFeed(RemoteWriter(svc.url), sim, spec.analysis.window)
            sdk = connect(api.url, api.key, RetryPolicy(attempts=3, backoff_s=1), sleep=clock.sleep)
            analyzer = ToldAnalyzer(Analyzer(SimTimePrometheus(svc.url, clock), spec.analysis,
                                             list(manifests.values())), say)
            controller = Controller(sdk, desired, analyzer, clock=clock, holder="rehearsal",
                                    log=lambda line: line == "analysis recorded" or say(line))
            say(f"fleet {desired.slug}: {devices} simulated device(s) on {short[old['id']]}; rolling out "
                f"{short[new['id']]} ({desired.tags})"
                + (f"; {sum(d['api_heartbeat_state'] != 'online' for d in api.store.tables['device'].values())}"
                   " offline" if offline else ""))
            status, reason = _drive(api, controller, feed, sim, clock, start + timedelta(days=max_days), say,
                                    short, new, list(human_pins))
            return Outcome(status, reason, timeline, time.perf_counter() - wall, clock() - start,
                           len(api.requests), feed.writer.sent)
        finally:
            svc.stop()
            shutil.rmtree(svc.workdir, ignore_errors=True)


def _analysis_line(a: AnalysisResult) -> str:
    bad = [f"{c.name} {c.verdict}: {c.detail}" for c in a.checks if c.verdict != Verdict.PASS]
    return (f"analysis of {a.stage}: {a.verdict.upper()} ({a.devices} device(s) vs {a.baseline_devices} on the "
            f"previous release) - " + ("; ".join(bad) if bad else "every check passed"))


def _running(api: BalenaDouble, short: dict) -> Counter:
    with api.lock:
        return Counter(short.get(d["is_running__release"], "?") for d in api.store.tables["device"].values())


def _drive(api: BalenaDouble, controller: Controller, feed: MetricsFeed, sim: SimDevices, clock: SimClock,
           deadline: datetime, say: Callable[[str], None], short: dict, new: dict, human_pins: list[str]
           ) -> tuple[str, str | None]:
    running_before: Counter = Counter()
    idle = 0
    while clock() < deadline and idle < IDLE_PASSES:
        feed.until(clock())
        result = controller.reconcile()
        for a in result.actions:
            if isinstance(a, PinDevices):
                for i in a.device_ids:
                    sim.stage_of.setdefault(i, sim.stage_index[a.stage])
                if a.stage in human_pins:  # a person takes one device of this stage back, in the dashboard
                    human_pins.remove(a.stage)
                    victim = api.store.tables["device"][a.device_ids[-1]]
                    api.dashboard_pin(victim["uuid"], None)
                    say(f"a person sets {victim['device_name']} to follow the fleet again, in the dashboard")
        with api.lock:
            tag = next((t["value"] for t in api.store.tables["release_tag"].values()
                        if t["release"] == new["id"] and t["tag_key"] == "edgecv.rollout"), None)
        state = read_state({"edgecv.rollout": tag}) if tag else None
        if state is not None and state.status.final:
            clock.advance(minutes=10)
            api.devices_apply_targets()
            say(f"rollout {state.status}" + (f": {state.reason}" if state.reason else "") + "; devices run "
                + ", ".join(f"{k} x{v}" for k, v in sorted(_running(api, short).items())))
            return str(state.status), state.reason
        if state is not None and state.status == Status.PAUSED:
            say(f"paused: {state.reason} - a person decides now")
            return str(state.status), state.reason
        if state is not None and state.status == Status.HALTED:
            clock.advance(hours=1)
            say("on call: checked the dashboard change, `edgecv rollout resume`")
            controller.command("resume", by="on-call")
            continue
        acted = any(isinstance(a, PinDevices | UnpinDevices | PinFleet) for a in result.actions)
        clock.advance(minutes=10)
        api.devices_apply_targets()  # the supervisors download and start what they should run
        running = _running(api, short)
        if running != running_before:
            say("devices run " + ", ".join(f"{k} x{v}" for k, v in sorted(running.items())))
            running_before, idle = running, 0
            continue
        if acted:
            idle = 0
            continue
        idle += 1
        until = min((a.until for a in result.actions if isinstance(a, Wait) and a.until), default=None)
        if until is not None and until > clock():
            clock.t = until + timedelta(minutes=1)
        else:
            clock.advance(hours=1)
    waits = [a.reason for a in result.actions if isinstance(a, Wait)]
    why = waits[0] if waits else "no decision"
    say(f"stopped: nothing changed in {idle} passes ({why})")
    return "unfinished", why


def demo_rehearsal(out: Callable[[str], None] = print) -> Outcome:
    """A short rehearsal for `make demo`: the example fleet file on 60 devices, a release whose fps collapses
    on the pilot's devices: the canary passes, the pilot's analysis fails, the rollout rolls back."""
    from fleet.repo import REPO_ROOT

    return rehearse(REPO_ROOT / "fleets/example-fleet.yaml", devices=60, regressions=["pilot:fps=2"], out=out)
