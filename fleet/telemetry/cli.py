"""`edgecv telemetry report`: a look at the fleet without Grafana.

    edgecv telemetry report --prometheus http://127.0.0.1:9090 --last 15m --out report/ \\
        [--manifest models/nanodet-m/manifest.yaml] [--selector 'site="s1",device="d1"']

Writes latency.png, fps.png and confidence.png (see fleet.telemetry.report); exits 1 when no plot had any
data (is anything scraping the app?). The device health exporter is `edgecv health` (app.health.cli).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from fleet.promql import PrometheusClient, PromQLError
from fleet.spec.durations import parse_duration
from fleet.spec.manifest import DEFAULT_BUDGET_MS, load_manifest
from fleet.spec.problems import ValidationFailed
from fleet.telemetry.report import parse_time, promql_duration, write_report


def _seconds(text: str, option: str) -> float:
    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _time(text: str, option: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@click.group("telemetry")
def telemetry() -> None:
    """Fleet telemetry: PNG reports from Prometheus."""


@telemetry.command("report")
@click.option("--prometheus", "url", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
@click.option("--last", "last", default=None, help="the range ending now, e.g. 15m, 2h, 1d12h (default 1h)")
@click.option("--start", default=None, help="range start: unix seconds or ISO 8601 (with --end)")
@click.option("--end", default=None, help="range end: unix seconds or ISO 8601 (default now)")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="model manifest: its latency budget and reference confidence (default: the blueprint budget)")
@click.option("--selector", default="", help="label matchers added to every query, e.g. 'site=\"s1\",device=\"d1\"'")
@click.option("--rate-window", default=None, help="rate() window (default: 4 steps, at least 1m)")
def report_cmd(url, last, start, end, out_dir: Path, manifest, selector, rate_window) -> None:
    """Render latency, fps and confidence plots of a time range as PNGs in OUT."""
    if last and (start or end):
        raise click.UsageError("give either --last or --start/--end, not both")
    t_end = _time(end, "--end") if end else time.time()
    t_start = _time(start, "--start") if start else t_end - _seconds(last or "1h", "--last")
    if t_start >= t_end:
        raise click.UsageError(f"--start must be before --end ({t_start:.0f} >= {t_end:.0f})")
    window = promql_duration(_seconds(rate_window, "--rate-window")) if rate_window else None
    budget, reference = DEFAULT_BUDGET_MS, None
    if manifest:
        try:
            m = load_manifest(manifest)
        except ValidationFailed as exc:  # one FILE:LINE: FIELD: MESSAGE per problem
            raise click.ClickException(f"invalid manifest:\n{exc}") from None
        budget, reference = m.latency_budget_ms.as_dict(), m.reference_confidence
    try:
        written = write_report(PrometheusClient(url), selector, t_start, t_end, window, budget, reference, out_dir)
    except PromQLError as exc:
        raise click.ClickException(str(exc)) from None
    for path, has_data in written.items():
        click.echo(f"{path}{'' if has_data else '  (no data)'}")
    if not any(written.values()):
        click.echo(f"error: no edgecv series in {url} for that range{' and ' + selector if selector else ''}; "
                   "is Prometheus scraping the app?", err=True)
        sys.exit(1)
