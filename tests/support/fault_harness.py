"""The real device app (`edgecv app run`, a subprocess) under injected faults, and what the tests measure.

- `AppProcess`: writes the config, runs the app, reads /metrics and /healthz, SIGTERMs it (timed), reads its
  summary line, its shared-memory regions (/dev/shm/edgecv_app_<pid>_*) and what it left in its spool;
- `EventLog`: an MQTT subscriber with a persistent session (it survives broker restarts without missing a
  QoS 1 message) that keeps every event id received, in order;
- `small_fs`: a tmpfs of a few MB mounted for the test (we run as root), `fill` writes it full;
- `wait_for`: poll a condition; returns the seconds it took (the detect/recover figures).

EDGECV_FAULTS_APP_ROOT runs another checkout's app (e.g. an export of main, to measure "before"; config
keys that app does not know yet, BASELINE_UNKNOWN, are left out); EDGECV_FAULTS_REPORT names a JSON-lines
file each test appends its figures to.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fleet.local.procs import free_port
from fleet.local.rtsp import VTEST, sample_video
from fleet.repo import REPO_ROOT

APP_ROOT = Path(os.environ.get("EDGECV_FAULTS_APP_ROOT") or REPO_ROOT)
REPORT = os.environ.get("EDGECV_FAULTS_REPORT")
MANIFEST = REPO_ROOT / "models" / "nanodet-m" / "manifest.yaml"
SITE = "site-f"
BASELINE_UNKNOWN = {("drain_timeout_s",), ("evidence", "min_free_bytes"), ("evidence", "min_free_percent"),
                    ("triton", "control_timeout_s")}


def video() -> Path:
    return VTEST if VTEST.is_file() else sample_video()


# vtest.avi is 768x576; people walk through it all the time. A whole-frame zone firing once per track per
# second gives a steady few events a second: enough to count losses, few enough for a slow CI box.
RULES = {
    "zones": [{"name": "all", "polygon": [[0, 0], [768, 0], [768, 576], [0, 576]]}],
    "rules": [{"name": "person-seen", "kind": "zone_intrusion", "zone": "all", "classes": ["person"],
               "min_score": 0.4, "cooldown_s": 1.0}],
}


def app_config(work: Path, device: str, triton_url: str, broker_port: int, cameras: list[dict], **extra) -> dict:
    return {
        "site_id": SITE, "device_id": device, "manifest": str(MANIFEST), "artifact_root": str(REPO_ROOT),
        "triton": {"url": triton_url, "request_timeout_s": 2, "ready_timeout_s": 60},
        "batching": {"max_batch": 2, "max_delay_ms": 30},
        "cameras": cameras,
        "tracker": {"min_hits": 2, "max_age_s": 1.5},
        "mqtt": {"host": "127.0.0.1", "port": broker_port},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
        "health": {"enabled": False},
        "spool_dir": str(work / "spool"),
        **extra,
    }


def file_camera(cam_id: str = "file", fps: float = 4) -> dict:
    return {"id": cam_id, "url": str(video()), "fps": fps, **RULES}


def rtsp_camera_config(cam_id: str, url: str, fps: float = 4, timeout_ms: int = 2000) -> dict:
    return {"id": cam_id, "url": url, "fps": fps, "open_timeout_ms": timeout_ms, "read_timeout_ms": timeout_ms,
            **RULES}


def wait_for(cond, timeout: float, what: str, every: float = 0.1, log=None) -> float:
    """Seconds until cond() is truthy; AssertionError after timeout (with the app's log tail when given)."""
    took = measure(cond, timeout, every)
    if took is None:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{log()}" if log else ""))
    return took


def measure(cond, timeout: float, every: float = 0.1) -> float | None:
    """Seconds until cond() is truthy, None after timeout: a figure for the table, asserted at the end (so a
    run against an app that fails one step still measures the next ones)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(every)
    return None


def within(value: float | None, bound: float) -> bool:
    return value is not None and value <= bound


class EventLog:
    """Every event id published under edgecv/SITE/<device>/+/events, in arrival order (re-sends included)."""

    def __init__(self, port: int, device: str):
        self.ids: list[str] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"faults-{uuid.uuid4().hex[:8]}",
                                  clean_session=False)  # the broker keeps our QoS 1 messages while we are away
        self.client.reconnect_delay_set(0.2, 1.0)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(f"edgecv/{SITE}/{device}/+/events", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "subscriber not subscribed"

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.ids.append(json.loads(msg.payload)["event_id"])

    def unique(self) -> set[str]:
        with self.lock:
            return set(self.ids)

    def duplicates(self) -> int:
        with self.lock:
            return len(self.ids) - len(set(self.ids))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class AppProcess:
    def __init__(self, work: Path, config: dict, run: int = 1):
        """`run` > 1: the same device started again (same config and spool), with its own log."""
        self.work, self.config = work, config
        if APP_ROOT != REPO_ROOT:
            config = _without(config, BASELINE_UNKNOWN)
        self.path = work / f"{config['device_id']}.yaml"
        self.path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = work / f"{config['device_id']}-{run}.log"
        self.port = config["metrics"]["port"]
        self.proc: subprocess.Popen | None = None
        self.events_seen = 0.0  # newest edgecv_events_total read (what a crashed app had produced at least)
        self.started_at = 0.0

    def start(self) -> AppProcess:
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONPATH": str(APP_ROOT), "PYTHONUNBUFFERED": "1"}
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "fleet.cli", "app", "run", "--config", str(self.path)],
                                     cwd=APP_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        threading.Thread(target=self._count_events, name="events-sampler", daemon=True).start()
        return self

    def _count_events(self) -> None:
        # An app that crashes prints no summary: what it had produced is the newest count read before.
        while self.alive():
            self.metric("edgecv_events_total")
            time.sleep(0.3)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self, n: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def metric(self, name: str, **labels) -> float | None:
        """Sum of a metric's samples matching labels; None when the app does not answer."""
        try:
            text = requests.get(self.url("/metrics"), timeout=2).text
        except requests.RequestException:
            return None
        total = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        if name == "edgecv_events_total":
            self.events_seen = max(self.events_seen, total)
        return total

    def health(self) -> tuple[int | None, dict]:
        try:
            r = requests.get(self.url("/healthz"), timeout=2)
            return r.status_code, r.json()
        except (requests.RequestException, ValueError):
            return None, {}

    def ready(self) -> bool:
        try:
            return requests.get(self.url("/readyz"), timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout: float = 90) -> float:
        return wait_for(lambda: self.ready() or not self.alive(), timeout, "the app to be ready", log=self.log)

    def sigterm(self, timeout: float = 60) -> tuple[int | None, float]:
        """(exit code or None when still running after timeout, seconds from SIGTERM to exit)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def summary(self) -> dict | None:
        for line in reversed(self.log_path.read_text(errors="replace").splitlines()):
            if line.startswith('{"frames_processed"'):
                return json.loads(line)
        return None

    def events_produced(self) -> int:
        """Events the app produced: its summary's count, or (crashed) the newest edgecv_events_total seen."""
        s = self.summary()
        return int(s["events"]) if s else int(self.events_seen)

    def shm_regions(self) -> list[str]:
        return glob.glob(f"/dev/shm/edgecv_app_{self.pid}_*")

    def spooled_ids(self) -> set[str]:
        """Event ids still in the spool on disk (sent at the next start): committed, not lost."""
        db = Path(self.config["spool_dir"]) / "spool.db"
        if not db.exists():
            return set()
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            try:
                rows = con.execute("SELECT payload FROM spool").fetchall()
            except sqlite3.Error:
                return set()
        return {json.loads(bytes(p)).get("event_id") for (p,) in rows} - {None}

    def thread_errors(self) -> float | None:
        return self.metric("edgecv_thread_errors_total")


def _without(config: dict, keys: set[tuple[str, ...]]) -> dict:
    out = json.loads(json.dumps(config))
    for key in keys:
        node = out
        for k in key[:-1]:
            node = node.get(k) or {}
        node.pop(key[-1], None)
    return out


@contextlib.contextmanager
def small_fs(path: Path, size_mb: int):
    """A tmpfs of size_mb mounted on path for the test (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, leave_bytes: int = 0) -> Path:
    """Write a filler file until the file system has leave_bytes free (0: until ENOSPC)."""
    filler = directory / f".filler-{uuid.uuid4().hex[:6]}"
    chunk = b"\0" * (64 << 10)
    with filler.open("wb", buffering=0) as f:  # unbuffered: ENOSPC comes from a write, never from close
        try:
            while True:
                free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
                if leave_bytes and free <= leave_bytes + len(chunk):
                    f.write(b"\0" * max(0, free - leave_bytes))
                    break
                f.write(chunk)
        except OSError:
            pass  # full: what we wanted
    return filler


def record(fault: str, **figures) -> None:
    """Append one test's figures to EDGECV_FAULTS_REPORT (when set), tagged with the app tree measured."""
    if not REPORT:
        return
    row = {"fault": fault, "app_root": str(APP_ROOT), **figures}
    with open(REPORT, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


def ledger(app: AppProcess, events: EventLog, earlier: tuple[AppProcess, ...] = ()) -> dict:
    """Events produced (by app and the earlier runs of the same device) / received / still spooled / lost
    (produced, neither received nor spooled)."""
    received = events.unique()
    spooled = app.spooled_ids()
    produced = app.events_produced() + sum(a.events_produced() for a in earlier)
    return {"sent": produced, "received": len(received), "spooled": len(spooled - received),
            "lost": max(0, produced - len(received | spooled)), "duplicates": events.duplicates()}
