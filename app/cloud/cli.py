"""`edgecv sigv4-forward`: sign the local Prometheus agent's remote writes for Amazon Managed Prometheus.

    edgecv sigv4-forward --upstream https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-.../api/v1/remote_write \\
        --region eu-west-1 --profile edgecv-device --port 9095

Runs until SIGTERM; the agent's remote_write url is http://127.0.0.1:9095.
"""

from __future__ import annotations

import logging
import signal
import threading

import click


@click.command("sigv4-forward")
@click.option("--upstream", required=True, help="the remote-write URL to sign for (AMP's .../api/v1/remote_write)")
@click.option("--region", required=True, help="the workspace's AWS region")
@click.option("--profile", default=None, help="AWS profile (default: the SDK's credential chain)")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9095, show_default=True, type=int)
def sigv4_forward(upstream: str, region: str, profile: str | None, host: str, port: int) -> None:
    """Sign and forward remote writes from the local agent."""
    from app.cloud.sigv4_forward import SigV4Forwarder

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        forwarder = SigV4Forwarder(upstream, region, profile, host, port).start()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo(f"signing remote writes on {forwarder.url} -> {upstream}")
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    forwarder.stop()
