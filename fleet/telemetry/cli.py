"""`edgecv telemetry`: a look at the fleet without Grafana, and the device health exporter on its own.

    edgecv telemetry report --prometheus http://127.0.0.1:9090 --last 15m --out report/ \\
        [--manifest models/nanodet-m/manifest.yaml] [--selector 'site="s1",device="d1"']
    edgecv telemetry health --port 9109 [--upstream broker.example:8883] [--mount / --mount /data]

`report` runs Prometheus range queries and writes three PNGs (matplotlib, no display needed):
latency.png (p95 per stage against the manifest's budget), fps.png (per camera against its target) and
confidence.png (mean confidence over time, and the distribution over the range against the manifest's
reference). It exits 1 when no plot had any data (is anything scraping the app?).
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import click
import requests

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_POINTS = 300  # per series; the step follows from the range


def parse_duration(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration like 30s, 15m, 2h or 1d")
    return float(m.group(1)) * _SECONDS[m.group(2)]


def parse_time(text: str) -> float:
    """Unix seconds or an ISO 8601 / RFC 3339 time (a time without zone is local)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither unix seconds nor an ISO 8601 time") from None


def promql_duration(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


# --- Prometheus ----------------------------------------------------------------------------------------


@dataclass
class Series:
    labels: dict[str, str]
    times: list[datetime]
    values: list[float]


class Prometheus:
    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def _get(self, path: str, params: dict) -> list[dict]:
        try:
            resp = requests.get(f"{self.url}{path}", params=params, timeout=30)
        except requests.RequestException as exc:
            raise click.ClickException(f"cannot reach Prometheus at {self.url}: {exc}") from None
        try:
            body = resp.json()
        except ValueError:
            raise click.ClickException(f"{self.url}{path} answered HTTP {resp.status_code}, not JSON") from None
        if body.get("status") != "success":
            raise click.ClickException(f"Prometheus refused {params['query']!r}: {body.get('error')}")
        return body["data"]["result"]

    def range(self, query: str, start: float, end: float, step: float) -> list[Series]:
        result = self._get("/api/v1/query_range", {"query": query, "start": start, "end": end, "step": step})
        return [
            Series(
                r["metric"],
                [datetime.fromtimestamp(float(t)) for t, _ in r["values"]],
                [float(v) for _, v in r["values"]],
            )
            for r in result
        ]

    def instant(self, query: str, at: float) -> list[tuple[dict, float]]:
        return [(r["metric"], float(r["value"][1])) for r in self._get("/api/v1/query", {"query": query, "time": at})]


# --- plots ---------------------------------------------------------------------------------------------


def _figure(title: str, ylabel: str, rows: int = 1):
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(10, 4.5 * rows), squeeze=False)
    axes[0][0].set_title(title)
    axes[0][0].set_ylabel(ylabel)
    return plt, fig, [a[0] for a in axes]


def _time_axis(ax) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _note(ax, has_data: bool) -> None:
    if not has_data:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, fontsize=16, color="grey")
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="upper left")
    ax.grid(alpha=0.3)


def _save(plt, fig, ax, path: Path, has_data: bool) -> None:
    _note(ax, has_data)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _name(labels: dict, key: str) -> str:
    """Legend text: the label, prefixed with the device when several devices are mixed."""
    return f"{labels['device']}/{labels.get(key, '?')}" if "device" in labels else labels.get(key, "?")


def plot_latency(prom, sel, start, end, step, window, budget_ms: dict[str, float], out: Path) -> bool:
    q = (f"histogram_quantile(0.95, sum by (stage, le) "
         f"(rate(edgecv_stage_latency_seconds_bucket{{{sel}}}[{window}])))")
    series = [s for s in prom.range(q, start, end, step) if any(v == v for v in s.values)]  # drop all-NaN
    plt, fig, (ax,) = _figure("Latency p95 per stage (dashed: budget)", "milliseconds")
    for s in sorted(series, key=lambda s: s.labels.get("stage", "")):
        stage = s.labels.get("stage", "?")
        (line,) = ax.plot(s.times, [v * 1000 for v in s.values], label=stage)
        if stage in budget_ms:
            ax.axhline(budget_ms[stage], color=line.get_color(), linestyle="--", linewidth=1)
    _time_axis(ax)
    _save(plt, fig, ax, out, bool(series))
    return bool(series)


def plot_fps(prom, sel, start, end, step, out: Path) -> bool:
    fps = prom.range(f"edgecv_camera_fps{{{sel}}}", start, end, step)
    targets = {_name(s.labels, "camera"): s for s in prom.range(f"edgecv_camera_target_fps{{{sel}}}", start, end, step)}
    plt, fig, (ax,) = _figure("Frames per second per camera (dashed: target)", "fps")
    for s in sorted(fps, key=lambda s: _name(s.labels, "camera")):
        name = _name(s.labels, "camera")
        (line,) = ax.plot(s.times, s.values, label=name)
        if name in targets:
            ax.plot(targets[name].times, targets[name].values, color=line.get_color(), linestyle="--", linewidth=1)
    _time_axis(ax)
    _save(plt, fig, ax, out, bool(fps))
    return bool(fps)


def plot_confidence(prom, sel, start, end, step, window, reference, out: Path) -> bool:
    mean = prom.range(
        f"sum(rate(edgecv_detection_confidence_sum{{{sel}}}[{window}])) "
        f"/ sum(rate(edgecv_detection_confidence_count{{{sel}}}[{window}]))", start, end, step)
    buckets = prom.instant(
        f"sum by (le) (increase(edgecv_detection_confidence_bucket{{{sel}}}[{promql_duration(end - start)}]))", end)
    plt, fig, (ax_mean, ax_hist) = _figure("Mean detection confidence", "confidence", rows=2)
    has_mean = any(v == v for s in mean for v in s.values)
    for s in mean:
        ax_mean.plot(s.times, s.values, label="mean")
    ax_mean.set_ylim(0, 1)
    _time_axis(ax_mean)
    _note(ax_mean, has_mean)

    # Cumulative buckets -> counts per bucket, as fractions so they compare with the reference.
    edges_counts = sorted((float(m["le"]), v) for m, v in buckets if m.get("le") not in (None, "+Inf"))
    has_hist = sum(v for _, v in edges_counts) > 0
    if has_hist:
        uppers = [e for e, _ in edges_counts]
        counts = [c - p for (_, c), (_, p) in zip(edges_counts, [(0.0, 0.0)] + edges_counts[:-1], strict=True)]
        total = sum(counts) or 1.0
        lowers = [0.0] + uppers[:-1]
        ax_hist.bar(lowers, [c / total for c in counts], width=[u - lo for u, lo in zip(uppers, lowers, strict=True)],
                    align="edge", alpha=0.6, label="observed")
    if reference is not None:
        ref_total = sum(reference.counts)
        ax_hist.stairs([c / ref_total for c in reference.counts], reference.edges, color="black", label="reference")
    ax_hist.set_title("Confidence distribution over the range")
    ax_hist.set_xlabel("confidence")
    ax_hist.set_ylabel("fraction of detections")
    _save(plt, fig, ax_hist, out, has_hist)
    return has_mean or has_hist


# --- commands ------------------------------------------------------------------------------------------


@click.group("telemetry")
def telemetry() -> None:
    """Fleet telemetry: PNG reports from Prometheus, and the device health exporter."""


@telemetry.command("report")
@click.option("--prometheus", "url", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
@click.option("--last", "last", default=None, help="the range ending now, e.g. 15m, 2h, 1d (default 1h)")
@click.option("--start", default=None, help="range start: unix seconds or ISO 8601 (with --end)")
@click.option("--end", default=None, help="range end: unix seconds or ISO 8601 (default now)")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="model manifest: its latency budget and reference confidence (default: the blueprint budget)")
@click.option("--selector", default="", help="label matchers added to every query, e.g. 'site=\"s1\",device=\"d1\"'")
@click.option("--rate-window", default=None, help="rate() window (default: 4 steps, at least 1m)")
def report_cmd(url, last, start, end, out_dir: Path, manifest, selector, rate_window) -> None:
    """Render latency, fps and confidence plots of a time range as PNGs in OUT."""
    from fleet.spec.manifest import DEFAULT_BUDGET_MS, load_manifest

    if last and (start or end):
        raise click.UsageError("give either --last or --start/--end, not both")
    t_end = parse_time(end) if end else time.time()
    t_start = parse_time(start) if start else t_end - parse_duration(last or "1h")
    if t_start >= t_end:
        raise click.UsageError(f"--start must be before --end ({t_start:.0f} >= {t_end:.0f})")
    step = max(1.0, (t_end - t_start) / MAX_POINTS)
    window = promql_duration(parse_duration(rate_window) if rate_window else max(4 * step, 60.0))
    budget, reference = DEFAULT_BUDGET_MS, None
    if manifest:
        try:
            m = load_manifest(manifest)
        except ValueError as exc:  # ValidationFailed: one FILE:LINE: FIELD: MESSAGE per problem
            raise click.ClickException(f"invalid manifest:\n{exc}") from None
        budget, reference = m.latency_budget_ms.as_dict(), m.reference_confidence

    out_dir.mkdir(parents=True, exist_ok=True)
    prom = Prometheus(url)
    plots = {
        "latency.png": lambda p: plot_latency(prom, selector, t_start, t_end, step, window, budget, p),
        "fps.png": lambda p: plot_fps(prom, selector, t_start, t_end, step, p),
        "confidence.png": lambda p: plot_confidence(prom, selector, t_start, t_end, step, window, reference, p),
    }
    found = 0
    for name, plot in plots.items():
        path = out_dir / name
        has_data = plot(path)
        found += has_data
        click.echo(f"{path}{'' if has_data else '  (no data)'}")
    if not found:
        click.echo(f"error: no edgecv series in {url} for that range{' and ' + selector if selector else ''}; "
                   "is Prometheus scraping the app?", err=True)
        sys.exit(1)


@telemetry.command("health")
@click.option("--port", type=click.IntRange(0, 65535), default=9109, show_default=True)
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--source", type=click.Choice(["auto", "tegrastats", "psutil"]), default="auto", show_default=True,
              help="auto: tegrastats where it exists (a Jetson), else psutil")
@click.option("--mount", "mounts", multiple=True, default=["/"], show_default=True, help="filesystem to report")
@click.option("--upstream", default=None, help="HOST:PORT to probe for loss and RTT (TCP connect)")
@click.option("--probe-interval", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--tegrastats-cmd", default=None, help="tegrastats command line (default: tegrastats --interval 1000)")
def health_cmd(port, host, source, mounts, upstream, probe_interval, tegrastats_cmd) -> None:
    """Serve the device health metrics alone on /metrics until SIGTERM or SIGINT."""
    from prometheus_client import CollectorRegistry, start_http_server

    from app.health.exporter import HealthExporter

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
