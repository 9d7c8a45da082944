"""`edgecv app`: run the device pipeline, and report its per-stage latency.

    edgecv app run --config site.yaml [--duration 60] [--latency-report latency.json]
    edgecv app report --metrics-url http://127.0.0.1:9108/metrics --out latency.json
    edgecv app batch VIDEO... --config site.yaml --out DIR [--batch 32]   (app.batch: the overnight mode)

`run` serves /metrics, /healthz and /readyz on the metrics port and runs until SIGTERM or SIGINT (or
--duration), then drains in-flight work and exits 0. A config with problems prints them as
FILE:LINE: FIELD: MESSAGE and exits 2; Triton not ready within triton.ready_timeout_s exits 3.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import click

EXIT_CONFIG = 2
EXIT_TRITON = 3


@click.group("app")
def app_group() -> None:
    """The on-device pipeline: cameras -> Triton -> tracking -> rules -> MQTT alerts."""


@app_group.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), help="app config YAML")
@click.option("--duration", type=float, default=None, help="stop after this many seconds (default: run until signalled)")
@click.option("--latency-report", type=click.Path(path_type=Path), default=None,
              help="write the per-stage p50/p95 latency JSON here on exit (what `edgecv gates --latency` reads)")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def run_cmd(config_path: Path, duration: float | None, latency_report: Path | None, log_level: str) -> None:
    """Run the pipeline from CONFIG until SIGTERM/SIGINT or --duration."""
    from app.config import check_config

    resolved, problems = check_config(config_path)
    if problems:
        for p in problems:
            click.echo(str(p), err=True)
        click.echo(f"{len(problems)} problem(s) in {config_path}", err=True)
        sys.exit(EXIT_CONFIG)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from app.runner import AppRunner

    runner = AppRunner(resolved)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: runner.stop())
    try:
        runner.start()
    except TimeoutError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_TRITON)
    except InterruptedError:
        click.echo("stopped before Triton was ready", err=True)
        return
    click.echo(f"metrics, /healthz, /readyz on port {runner.server.port}", err=True)
    runner.run(duration)
    summary = runner.summary()
    if latency_report:
        from app.pipeline.latency import write_report

        write_report(runner.pipeline.recorder.report(), latency_report)
        click.echo(f"latency report -> {latency_report}", err=True)
    click.echo(json.dumps(summary))


@app_group.command("report")
@click.option("--metrics-url", default="http://127.0.0.1:9108/metrics", show_default=True,
              help="the running app's Prometheus endpoint")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="write the JSON here (default: stdout)")
def report_cmd(metrics_url: str, out: Path | None) -> None:
    """Per-stage p50/p95 latency (ms) from a running app's histograms, as `edgecv gates --latency` reads it."""
    import requests

    from app.pipeline.latency import from_prometheus_text, write_report

    try:
        resp = requests.get(metrics_url, timeout=5)
        resp.raise_for_status()
    except requests.RequestException as exc:
        click.echo(f"error: cannot read {metrics_url}: {exc}", err=True)
        sys.exit(1)
    report = from_prometheus_text(resp.text)
    if not report["stages"]:
        click.echo(f"error: {metrics_url} has no edgecv_stage_latency_seconds samples yet", err=True)
        sys.exit(1)
    if out:
        write_report(report, out)
        click.echo(f"latency report -> {out}", err=True)
    else:
        click.echo(json.dumps(report, indent=2))


@app_group.command("batch")
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="directory for the JSON Lines, events, COCO results and .done markers")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="app config YAML: Triton, the manifest, the tracker and the rules")
@click.option("--camera", "camera_id", default=None, help="whose rules apply (default: the config's first camera)")
@click.option("--batch", type=int, default=None,
              help="images per request (default: the manifest's largest preferred batch size)")
@click.option("--decoders", type=int, default=min(4, os.cpu_count() or 1), show_default=True,
              help="files decoded in parallel")
@click.option("--capture", type=click.Choice(["opencv", "gstreamer"]), default="opencv", show_default=True,
              help="file decoder: OpenCV's FFmpeg, or GStreamer's decodebin (NVDEC on a Jetson)")
@click.option("--progress/--no-progress", default=True, show_default=True)
def batch_cmd(videos: tuple[Path, ...], out: Path, config_path: Path, camera_id: str | None, batch: int | None,
              decoders: int, capture: str, progress: bool) -> None:
    """Run recorded VIDEO files through the model (resumable: finished files are skipped)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from app.batch import BatchError, BatchRunner
    from app.config import check_config

    resolved, problems = check_config(config_path)
    if problems:
        for p in problems:
            click.echo(str(p), err=True)
        sys.exit(EXIT_CONFIG)
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bar = Progress(TextColumn("[bold]batch"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} frames"),
                   TextColumn("{task.fields[fps]:.0f} frames/s"), TextColumn("ETA"), TimeRemainingColumn(),
                   disable=not progress, transient=False)
    task = bar.add_task("batch", total=None, fps=0.0)

    def on_progress(done: int, total: int, fps: float) -> None:
        bar.update(task, completed=done, total=max(total, done) or None, fps=fps)

    try:
        runner = BatchRunner(resolved, out, camera_id=camera_id, batch=batch, decoders=decoders, capture=capture,
                             on_progress=on_progress)
        with bar:
            summary = runner.run(videos)
    except BatchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except TimeoutError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_TRITON)
    click.echo(json.dumps({"videos": summary.videos, "skipped": summary.skipped, "frames": summary.frames,
                           "events": summary.events, "seconds": round(summary.seconds, 2),
                           "frames_per_s": round(summary.fps, 1)}))
