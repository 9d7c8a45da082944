"""`edgecv review demo`: a real review queue in one command, filled by the device app's own flagged items.

It starts the review service (uvicorn, SQLite in --data-dir), gives the demo device a token and makes a
reviewer with a fresh password, then runs the real app pipeline on the bundled sample video against a local
Triton (NanoDet, python backend) with review sampling switched on: low-confidence, drift and random samples
go to the queue through the app's own review client (app/review_client.py), and the evidence packages of
the app's alerts (H.264 clips) are queued as alerts with their clip. Then it prints the URL and the login
and keeps serving until Ctrl-C.

`fill_review_demo()` is the same without the command line, for `make demo` and tests.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from fleet.repo import REPO_ROOT

DEFAULT_MANIFEST = REPO_ROOT / "models" / "nanodet-m" / "manifest.yaml"
DEMO_CONFIG = REPO_ROOT / "app" / "demo_config.yaml"
TOKEN_ENV = "EDGECV_DEMO_REVIEW_TOKEN"
REVIEWER = "demo"
# Generous sampling so a short run fills a queue (a site would flag far fewer frames: see SamplingConfig).
DEMO_SAMPLING = {"low_confidence": [0.3, 0.5], "low_confidence_rate": 0.3, "random_rate": 0.02,
                 "max_per_minute": 120.0, "burst": 20}


@dataclass
class ReviewDemo:
    url: str
    username: str
    password: str
    data_dir: Path
    queued: dict[str, int] = field(default_factory=dict)  # per reason
    server: object | None = None
    thread: threading.Thread | None = None

    def login_line(self) -> str:
        return f"open {self.url}/login and sign in as {self.username} / {self.password}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)


def start_service(data_dir: Path, classes: list[str], port: int, host: str = "127.0.0.1") -> ReviewDemo:
    """The review service on a uvicorn thread; a reviewer with a fresh password (printed once)."""
    import uvicorn

    from fleet.review.auth import add_reviewer
    from fleet.review.settings import ReviewSettings
    from fleet.review.web import create_app

    settings = ReviewSettings(db_url=ReviewSettings.sqlite_url(data_dir), data_dir=data_dir,
                              evidence_root=data_dir / "evidence", classes=classes)
    settings.evidence_root.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    db = app.state.review.db
    password = secrets.token_urlsafe(9)
    with db.write() as s:
        from sqlalchemy import select

        from fleet.review.models import Reviewer

        exists = s.scalar(select(Reviewer.id).where(Reviewer.username == REVIEWER)) is not None
        add_reviewer(s, REVIEWER, password, 300 if not exists else None, db.now(), update=exists)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="review-demo", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the review service did not start on {host}:{port}")
        time.sleep(0.05)
    return ReviewDemo(f"http://{host}:{port}", REVIEWER, password, data_dir, server=server, thread=thread)


def tokens(data_dir: Path, device: str) -> tuple[str, str]:
    """(the device's token, an uploader's token for the evidence packages)."""
    from fleet.review.auth import add_device_token
    from fleet.review.db import Database
    from fleet.review.settings import ReviewSettings

    db = Database(ReviewSettings.sqlite_url(data_dir), pool_size=1)
    try:
        with db.write() as s:
            return add_device_token(s, device, db.now()), add_device_token(s, "demo-uploader", db.now(),
                                                                           any_device=True)
    finally:
        db.dispose()


def app_config(out: Path, *, review_url: str, triton_url: str, mqtt_port: int, evidence_dir: Path,
               manifest: Path, video: Path) -> Path:
    """app/demo_config.yaml with both cameras on the sample video file, local evidence, review sampling on."""
    from fleet.demo import demo_config
    from fleet.local.procs import free_port

    demo_config(DEMO_CONFIG, out, triton_url=triton_url, protocol="grpc", rtsp_url=str(video), video=video,
                mqtt_port=mqtt_port, metrics_port=free_port(), manifest=manifest)
    cfg = yaml.safe_load(out.read_text())
    cfg["evidence"]["dir"] = str(evidence_dir)
    cfg["evidence"]["pre_roll_s"] = cfg["evidence"]["post_roll_s"] = 2
    cfg["sampling"] = DEMO_SAMPLING
    cfg["review"] = {"url": review_url, "token_env": TOKEN_ENV, "correction_poll_s": 0}
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def run_pipeline(cfg_path: Path, seconds: float, token: str, say=print) -> dict:
    """`edgecv app run` as its own process, as on a device; its summary (the last line it prints)."""
    say(f"the app runs the sample video through Triton for {seconds:.0f} s…")
    proc = subprocess.run([sys.executable, "-m", "fleet.cli", "app", "run", "--config", str(cfg_path),
                           "--duration", str(seconds), "--log-level", "WARNING"],
                          env={**os.environ, TOKEN_ENV: token}, capture_output=True, text=True,
                          timeout=seconds + 300)
    if proc.returncode != 0:
        raise RuntimeError(f"edgecv app run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def queue_evidence(url: str, token: str, evidence_dir: Path, say=print) -> int:
    from fleet.review.evidence import PackageError, item_from_package, post_item

    n = 0
    with requests.Session() as http:
        for event in sorted(evidence_dir.rglob("event.json")):
            try:
                post_item(http, url, token, item_from_package(event.parent, evidence_dir, reason="alert"))
                n += 1
            except PackageError as exc:
                say(f"warning: {exc}")
    return n


def fill_review_demo(data_dir: Path, seconds: float = 30.0, port: int | None = None,
                     manifest_path: Path = DEFAULT_MANIFEST, say=print) -> ReviewDemo:
    """Start the review service and fill it from a real pipeline run; returns with the service still serving
    (call `.stop()`). Items are idempotent by id, so running it again on the same data dir only adds."""
    from fleet.demo import _validate_models
    from fleet.local.mosquitto import mosquitto
    from fleet.local.procs import free_port
    from fleet.local.rtsp import sample_video
    from fleet.spec.manifest import load_manifest
    from fleet.triton.render import render

    data_dir = Path(data_dir).resolve()
    manifest = load_manifest(manifest_path)
    cfg = yaml.safe_load(DEMO_CONFIG.read_text())
    demo = start_service(data_dir, list(manifest.classes), port or free_port())
    try:
        device_token, uploader_token = tokens(data_dir, cfg["device_id"])
        evidence_dir = data_dir / "evidence"
        say(f"review service on {demo.url} (database: SQLite {data_dir / 'review.db'})")
        from rich.console import Console

        _validate_models(Console(stderr=True))
        with tempfile.TemporaryDirectory(prefix="edgecv-review-demo-") as tmp:
            tmp = Path(tmp)
            render(manifest, tmp / "models", "python")
            from fleet.local.triton import triton

            server = triton(tmp / "models", [manifest.name], workdir=tmp / "triton")
            broker = mosquitto()
            say("starting Triton (nvidia-pytriton's server) and mosquitto on 127.0.0.1…")
            server.start()
            try:
                broker.start()
                cfg_path = app_config(tmp / "app.yaml", review_url=demo.url, triton_url=server.grpc_url,
                                      mqtt_port=broker.port, evidence_dir=evidence_dir,
                                      manifest=Path(manifest_path).resolve(), video=sample_video())
                summary = run_pipeline(cfg_path, seconds, device_token, say)
            finally:
                broker.stop()
                server.stop()
        alerts = queue_evidence(demo.url, uploader_token, evidence_dir, say)
        demo.queued = queued_by_reason(data_dir)
        say(f"the app flagged {summary.get('review_sent', 0)} frame(s) "
            f"({summary.get('review_dropped', 0)} dropped) and wrote {alerts} alert package(s)")
    except BaseException:
        demo.stop()
        raise
    return demo


def queued_by_reason(data_dir: Path) -> dict[str, int]:
    from sqlalchemy import func, select

    from fleet.review.db import Database
    from fleet.review.models import Item
    from fleet.review.settings import ReviewSettings

    db = Database(ReviewSettings.sqlite_url(data_dir), pool_size=1)
    try:
        with db.read() as s:
            return dict(s.execute(select(Item.reason, func.count()).where(Item.status == "pending")
                                  .group_by(Item.reason)).all())
    finally:
        db.dispose()
