"""`edgecv demo`: the device app's main job on this machine, with every part real and local.

It validates the models, renders NanoDet's Triton repository (python backend) and starts a local Triton (the
nvidia-pytriton wheel's server), a GStreamer RTSP camera looping the sample video, and mosquitto, all on free
ports of 127.0.0.1; then runs the app (app/demo_config.yaml: one RTSP and one file camera, zone, line and
dwell rules) for a bounded time with a progress bar, and prints the latency budget table (stage, budget, p50,
p95, verdict), fps per camera, detections per class, the events that reached MQTT, the evidence packages
written (and uploaded to a local S3 emulator, moto's server) and the drift monitors' statistics.

    edgecv demo [--seconds 60] [--protocol grpc|http]     (EDGECV_DEMO_SECONDS overrides the default)
    edgecv demo --once                                     (one frame through Triton, its detections)

`infer_frames()` (frame -> detections in one Triton round trip) and `sample_frames()` are reused by tests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np
import yaml

from app.pipeline.types import Detections
from fleet.local.procs import free_port
from fleet.local.rtsp import VTEST, sample_video
from fleet.repo import REPO_ROOT
from fleet.spec.manifest import ModelManifest

DEFAULT_MANIFEST = REPO_ROOT / "models" / "nanodet-m" / "manifest.yaml"
DEMO_CONFIG = REPO_ROOT / "app" / "demo_config.yaml"
DEFAULT_SECONDS = 60.0

__all__ = ["VTEST", "demo", "infer_frames", "run_live", "run_once", "sample_frames", "sample_video"]


def sample_frames(indices: Sequence[int] = (0,), video: Path | None = None) -> list[np.ndarray]:
    """BGR frames at the given indices of the sample video."""
    import cv2

    path = video or sample_video()
    cap = cv2.VideoCapture(str(path))
    try:
        frames, i, wanted = [], 0, set(indices)
        while len(frames) < len(wanted):
            ok, frame = cap.read()
            if not ok:
                raise ValueError(f"{path} has fewer than {max(wanted) + 1} frames")
            if i in wanted:
                frames.append(frame)
            i += 1
        return frames
    finally:
        cap.release()


def infer_frames(
    manifest: ModelManifest, frames: Sequence[np.ndarray], url: str, protocol: str = "grpc"
) -> list[Detections]:
    """Preprocess, one batched Triton request through tritonclient, decode: detections in frame coordinates."""
    from app.pipeline.postprocess import decoder_for
    from app.pipeline.preprocess import Preprocessor

    if protocol == "grpc":
        import tritonclient.grpc as client
    else:
        import tritonclient.http as client
    pre = Preprocessor(manifest.input, len(frames))
    infos = [pre.write(i, f) for i, f in enumerate(frames)]
    batch = pre.batch(len(frames))
    inp = client.InferInput(manifest.input.name, list(batch.shape), manifest.input.dtype.value)
    inp.set_data_from_numpy(batch)
    outputs = [client.InferRequestedOutput(o.name) for o in manifest.outputs]
    result = client.InferenceServerClient(url).infer(manifest.name, [inp], outputs=outputs)
    return decoder_for(manifest)({o.name: result.as_numpy(o.name) for o in manifest.outputs}, infos)


def detections_table(manifest: ModelManifest, dets: Detections, title: str):
    from rich.table import Table

    table = Table(title=title)
    for col in ("#", "class", "score", "x1", "y1", "x2", "y2"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for i in np.argsort(-dets.scores):
        x1, y1, x2, y2 = dets.boxes[i]
        cls = manifest.classes[int(dets.class_ids[i])]
        table.add_row(str(len(table.rows) + 1), cls, f"{dets.scores[i]:.2f}", *(f"{v:.0f}" for v in (x1, y1, x2, y2)))
    return table


def _validate_models(console) -> None:
    from fleet.spec.validate import validate_paths

    files, problems = validate_paths([])
    if problems:
        raise click.ClickException("invalid manifests:\n" + "\n".join(str(p) for p in problems))
    console.print(f"[green]ok[/green] {len(files)} manifest/fleet file(s) valid")


def run_once(manifest_path: Path = DEFAULT_MANIFEST, protocol: str = "grpc", console=None) -> list[Detections]:
    """Validate every model, render the manifest's repository (python backend), start a local Triton,
    detect on one sample frame and print the detections. Returns them."""
    from rich.console import Console

    from fleet.local.triton import triton
    from fleet.spec.manifest import load_manifest
    from fleet.triton.render import render

    console = console or Console()
    _validate_models(console)
    manifest = load_manifest(manifest_path)
    video = sample_video()
    frames = sample_frames([0], video)
    with tempfile.TemporaryDirectory(prefix="edgecv-demo-") as tmp:
        render(manifest, Path(tmp) / "models", "python")
        console.print(f"rendered {manifest.ref}; starting Triton (nvidia-pytriton's server)…")
        with triton(Path(tmp) / "models", [manifest.name], workdir=Path(tmp) / "server") as server:
            url = server.grpc_url if protocol == "grpc" else server.http_url
            dets = infer_frames(manifest, frames, url, protocol)
    h, w = frames[0].shape[:2]
    console.print(detections_table(manifest, dets[0], f"{manifest.ref} on {video.name} frame 0 ({w}x{h}), {protocol}"))
    return dets


# --- the live demo -----------------------------------------------------------------------------------


class EventCounter:
    """Subscribes to the app's event topic like a site's consumer would; counts unique events by id."""

    def __init__(self, port: int, site: str, device: str):
        import paho.mqtt.client as mqtt

        self.events: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edgecv-demo-consumer")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"edgecv/{site}/{device}/+/events", qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("no SUBACK from the demo broker")

    def _on_message(self, client, userdata, msg) -> None:
        payload = json.loads(msg.payload)
        with self.lock:
            self.events.setdefault(payload["event_id"], payload)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def demo_config(template: Path, out: Path, *, triton_url: str, protocol: str, rtsp_url: str, video: Path,
                mqtt_port: int, metrics_port: int, manifest: Path, s3_url: str | None = None) -> Path:
    """The demo config pointed at this run's local services (everything else as in the template)."""
    cfg = yaml.safe_load(template.read_text())
    cfg["manifest"] = str(manifest)
    cfg["triton"].update(url=triton_url, protocol=protocol)
    streams = [c for c in cfg["cameras"] if str(c["url"]).startswith("rtsp://")]
    for cam in cfg["cameras"]:
        cam["url"] = rtsp_url if cam in streams else str(video)
    cfg["mqtt"]["port"] = mqtt_port
    cfg["metrics"] = {"host": "127.0.0.1", "port": metrics_port}
    cfg["spool_dir"] = str(out.parent / "spool")
    if cfg.get("evidence"):
        cfg["evidence"]["dir"] = str(out.parent / "evidence")
        if s3_url is None:
            cfg["evidence"].pop("store", None)  # packages stay local
        else:
            cfg["evidence"]["store"]["endpoint_url"] = s3_url
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def verdict(p50: float | None, p95: float | None, budget: float | None) -> str:
    if budget is None or p95 is None:
        return "[dim]-[/dim]"
    if p95 <= budget:
        return "[green]ok[/green]"
    return "[yellow]p95 over[/yellow]" if p50 is not None and p50 <= budget else "[red]over[/red]"


def print_summary(console, runner, manifest: ModelManifest, seconds: float, received: dict[str, dict]) -> None:
    from rich.table import Table

    from app.metrics import PIPELINE_STAGES

    pipe = runner.pipeline
    lat = pipe.recorder.percentiles()
    budget = manifest.latency_budget_ms.as_dict()
    table = Table(title=f"latency budget, {manifest.ref} (ms)")
    for col in ("stage", "budget", "p50", "p95", "verdict"):
        table.add_column(col, justify="left" if col in ("stage", "verdict") else "right")
    for stage in PIPELINE_STAGES:
        s = lat.get(stage, {})
        p50, p95, b = s.get("p50_ms"), s.get("p95_ms"), budget.get(stage)
        table.add_row(stage, "-" if b is None else f"{b:.0f}", "-" if p50 is None else f"{p50:.1f}",
                      "-" if p95 is None else f"{p95:.1f}", verdict(p50, p95, b))
    console.print(table)

    cams = Table(title="cameras (dropped: stale frames replaced by newer ones, or Triton away)")
    for col in ("camera", "source", "frames processed", "fps", "reconnects", "dropped"):
        cams.add_column(col, justify="left" if col in ("camera", "source") else "right")
    for src in pipe.sources:
        done = pipe.processed_per_camera[src.camera_id]
        dropped = pipe.dropped_per_camera.get(src.camera_id, 0) + getattr(src, "dropped", 0)
        cams.add_row(src.camera_id, "rtsp" if getattr(src, "is_stream", False) else "file", str(done),
                     f"{done / seconds:.1f}", str(getattr(src, "reconnects", 0)), str(dropped))
    console.print(cams)

    classes = Table(title="detections per class (after NMS)")
    classes.add_column("class")
    classes.add_column("detections", justify="right")
    for name, n in sorted(pipe.detections_per_class.items(), key=lambda kv: -kv[1]):
        classes.add_row(name, str(n))
    console.print(classes)

    events = Table(title="events sent (counted by the app) and received on MQTT (unique event ids)")
    for col in ("camera", "rule", "kind", "sent", "received"):
        events.add_column(col, justify="right" if col in ("sent", "received") else "left")
    sent = Counter((e.camera_id, e.rule, e.kind) for e in pipe.events)
    got = Counter((p["camera"], p["rule"], p["kind"]) for p in received.values())
    for key in sorted(set(sent) | set(got)):
        events.add_row(*key, str(sent.get(key, 0)), str(got.get(key, 0)))
    console.print(events)
    stale = sum(getattr(src, "dropped", 0) for src in pipe.sources)
    console.print(f"events: {pipe.events_sent} sent, {len(received)} received on MQTT; frames: "
                  f"{pipe.frames_processed} processed, {stale} replaced by a newer one before inference (newest "
                  f"frame wins), {pipe.frames_dropped} lost while Triton was away or failing")
    print_evidence_and_drift(console, runner)


def print_evidence_and_drift(console, runner) -> None:
    pipe = runner.pipeline
    if pipe.evidence is not None:
        ev = runner.pipeline.resolved.config.evidence
        where = f"{ev.dir}"
        if runner.store is not None:
            pending = len(runner.store.pending())
            where += (f"; uploaded to s3://{runner.store.bucket}/{runner.store.prefix}/ "
                      f"({pipe.evidence.written - pending} of {pipe.evidence.written}, {pending} left for next start)")
        console.print(f"evidence: {pipe.evidence.written} package(s) written (clip.mp4 H.264 "
                      f"{ev.pre_roll_s:g}s+{ev.post_roll_s:g}s, event.json, thumbnail.jpg) in {where}")
    if pipe.drift is not None:
        from rich.table import Table

        stats = pipe.drift.stats()
        limits = pipe.drift.limits()  # stated, or derived from the reference for this window's size
        table = Table(title=f"drift vs the reference histogram ({pipe.drift.confidence.n} detections in the window)")
        for col in ("statistic", "value", "threshold", "alarm"):
            table.add_column(col, justify="left" if col == "statistic" else "right")
        ref_entropy = getattr(pipe.drift, "reference_entropy", None)  # entropy alarms on a rise over it
        for kind in ("psi", "ks", "mean_confidence", "detection_entropy", "frame_entropy", "class_shift_psi"):
            value, limit = stats.get(kind), limits.get(kind)
            shown = "-" if limit is None else f"{limit:.3g}"
            if kind == "detection_entropy" and ref_entropy is not None:
                shown = f"{ref_entropy:.3f} + {limit:.3g}"
            alarm = pipe.drift.alarms.get(kind)
            table.add_row(kind, "-" if value is None else f"{value:.3f}", shown,
                          "[red]yes[/red]" if alarm and alarm.active else "-")
        console.print(table)
        console.print(f"drift events published: {len(pipe.drift_events)}")


def run_live(seconds: float, protocol: str = "grpc", manifest_path: Path = DEFAULT_MANIFEST,
             config_template: Path = DEMO_CONFIG, console=None, keep: Path | None = None) -> dict:
    """The live demo (see the module docstring). Returns the app's summary plus the events received.
    Its working folder is temporary; `keep` is where the evidence packages are copied before it goes."""
    from rich.console import Console

    from fleet.local.mosquitto import mosquitto
    from fleet.local.rtsp import rtsp_camera
    from fleet.local.s3 import local_s3
    from fleet.local.triton import triton
    from fleet.spec.manifest import load_manifest
    from fleet.triton.render import render

    console = console or Console()
    _log_to(console)
    _validate_models(console)
    manifest = load_manifest(manifest_path)
    video = sample_video()
    with tempfile.TemporaryDirectory(prefix="edgecv-demo-") as tmp:
        tmp = Path(tmp)
        render(manifest, tmp / "models", "python")
        server = triton(tmp / "models", [manifest.name], workdir=tmp / "triton")
        camera = rtsp_camera(video, fps=10, width=768, height=576)
        broker = mosquitto()
        with console.status("starting Triton, the RTSP camera and mosquitto on 127.0.0.1…"):
            server.start()
        try:
            camera.start()
            broker.start()
            console.print(f"Triton {manifest.ref} on {server.grpc_url} (gRPC) / {server.http_url} (HTTP); "
                          f"camera {camera.url}; mosquitto 127.0.0.1:{broker.port}")
            url = server.grpc_url if protocol == "grpc" else server.http_url
            template = yaml.safe_load(config_template.read_text())
            bucket = (template.get("evidence") or {}).get("store", {}).get("bucket")
            s3_log = Path(tempfile.gettempdir()) / "edgecv-demo-s3.log"
            with local_s3(bucket, log_path=s3_log) as s3_url:
                if s3_url:
                    console.print(f"evidence store: S3 emulator (moto) on {s3_url}, bucket {bucket} "
                                  f"(access log: {s3_log})")
                cfg_path = demo_config(config_template, tmp / "app.yaml", triton_url=url, protocol=protocol,
                                       rtsp_url=camera.url, video=video, mqtt_port=broker.port,
                                       metrics_port=free_port(), manifest=Path(manifest_path).resolve(),
                                       s3_url=s3_url)
                summary = _run_app(console, manifest, cfg_path, seconds, broker.port)
                keep_evidence(console, tmp / "evidence", keep)
                return summary
        finally:
            broker.stop()
            camera.stop()
            server.stop()


def keep_evidence(console, evidence: Path, keep: Path | None) -> None:
    if not evidence.is_dir():
        return
    if keep is None:
        console.print(f"{evidence} is temporary and goes when the demo ends; `edgecv demo --keep DIR` keeps it")
        return
    shutil.copytree(evidence, keep, dirs_exist_ok=True)
    console.print(f"evidence kept in {keep.resolve()}")


def _log_to(console) -> None:
    """Warnings from the app (a camera reconnecting, Triton away) above the progress bar, not through it."""
    import logging

    from rich.logging import RichHandler

    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(console=console, show_path=False, level=logging.WARNING))
        root.setLevel(logging.WARNING)


def _run_app(console, manifest: ModelManifest, cfg_path: Path, seconds: float, broker_port: int) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from app.config import load_config
    from app.metrics import Metrics
    from app.runner import AppRunner

    resolved = load_config(cfg_path)
    counter = EventCounter(broker_port, resolved.config.site_id, resolved.config.device_id)
    try:
        runner = AppRunner(resolved, Metrics())
        runner.start(ready_timeout_s=90)
        console.print(f"app metrics: http://127.0.0.1:{runner.server.port}/metrics (also /healthz, /readyz)")
        started = time.monotonic()
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                      TimeRemainingColumn(), console=console) as progress:
            task = progress.add_task(f"{manifest.ref}, {len(resolved.config.cameras)} cameras", total=seconds,
                                     status="")
            last = [0.0]

            def tick(pipe) -> None:
                now = time.monotonic()
                if now - last[0] >= 0.25:
                    last[0] = now
                    fps = " ".join(f"{c}={v:.1f}fps" for c, v in pipe.fps().items())
                    progress.update(task, completed=min(seconds, now - started),
                                    status=f"{fps}  events={pipe.events_sent}  frames={pipe.frames_processed}")

            runner.run(seconds, on_tick=tick)
            progress.update(task, completed=seconds)
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # let the last acknowledged events reach the consumer
        with counter.lock:
            received = dict(counter.events)
    finally:
        counter.close()
    print_summary(console, runner, manifest, elapsed, received)
    return {**runner.summary(), "received": len(received)}


def demo_seconds(value: float | None) -> float:
    if value is not None:
        return value
    env = os.environ.get("EDGECV_DEMO_SECONDS")
    try:
        return float(env) if env else DEFAULT_SECONDS
    except ValueError as exc:
        raise click.BadParameter(f"EDGECV_DEMO_SECONDS={env!r} is not a number of seconds") from exc


@click.command()
@click.option("--seconds", type=float, default=None,
              help=f"how long the app runs (default: $EDGECV_DEMO_SECONDS or {DEFAULT_SECONDS:.0f})")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", show_default=True)
@click.option("--once", is_flag=True, help="only send one sample frame through Triton and print its detections")
@click.option("--manifest", "manifest_path", type=click.Path(path_type=Path), default=DEFAULT_MANIFEST)
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="copy the evidence packages (clip.mp4, event.json, thumbnail.jpg) here before the demo's "
                   "temporary folder is removed")
@click.option("--rehearsal/--no-rehearsal", default=True, show_default=True,
              help="after the device pipeline, rehearse the example fleet's rollout policy on 60 simulated devices")
def demo(seconds: float | None, protocol: str, once: bool, manifest_path: Path, keep: Path | None,
         rehearsal: bool) -> None:
    """Run the device app on local Triton, RTSP and MQTT, then print its latency budget table and events;
    then a short rollout rehearsal (canary passes, the pilot regresses, the rollout rolls back)."""
    if once:
        run_once(manifest_path, protocol)
        return
    run_live(demo_seconds(seconds), protocol, manifest_path, keep=keep)
    if rehearsal:
        from fleet.rollout.rehearse import demo_rehearsal

        click.echo("\n== rollout rehearsal: fleets/example-fleet.yaml on 60 simulated devices, "
                   "fps collapses on the pilot's devices ==")
        demo_rehearsal(out=click.echo)
    click.echo("\nNext: `.venv/bin/edgecv review demo` fills a local review service from the pipeline's own "
               "flagged items and prints its URL and a login.")
