"""`edgecv health`: the device health exporter on its own (tegrastats or psutil, disks, upstream probe)."""

from __future__ import annotations

import signal
import threading

import click
from prometheus_client import CollectorRegistry, start_http_server

from app.health.exporter import HealthExporter


@click.command("health")
@click.option("--port", type=click.IntRange(0, 65535), default=9109, show_default=True)
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--source", type=click.Choice(["auto", "tegrastats", "psutil"]), default="auto", show_default=True,
              help="auto: tegrastats where it exists (a Jetson), else psutil")
@click.option("--mount", "mounts", multiple=True, default=["/"], show_default=True, help="filesystem to report")
@click.option("--upstream", default=None, help="HOST:PORT to probe for loss and RTT (TCP connect)")
@click.option("--probe-interval", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--tegrastats-cmd", default=None, help="tegrastats command line (default: tegrastats --interval 1000)")
def health(port, host, source, mounts, upstream, probe_interval, tegrastats_cmd) -> None:
    """Serve the device health metrics alone on /metrics until SIGTERM or SIGINT."""
    registry = CollectorRegistry()
    try:
        exporter = HealthExporter(registry, source, mounts, upstream, probe_interval,
                                  tegrastats_cmd.split() if tegrastats_cmd else None)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with exporter:
        server, _thread = start_http_server(port, addr=host, registry=registry)
        click.echo(f"device health ({exporter.source.name}) on http://{host}:{server.server_port}/metrics", err=True)
        stop.wait()
        server.shutdown()
