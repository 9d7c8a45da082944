"""Telemetry report: latency, fps and confidence plots of a time range, from Prometheus range queries.

latency.png (p95 per stage against the manifest's budget), fps.png (per camera against its target) and
confidence.png (mean confidence over time, and the distribution over the range against the manifest's
reference). matplotlib, no display needed.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from fleet.promql import PrometheusClient

MAX_POINTS = 300  # per series; the step follows from the range


def parse_time(text: str) -> float:
    """Unix seconds or an ISO 8601 / RFC 3339 time (a time without zone is local); ValueError otherwise."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is neither unix seconds nor an ISO 8601 time") from None


def promql_duration(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


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


def write_report(prom: PrometheusClient, selector: str, start: float, end: float, window: str | None,
                 budget_ms: dict[str, float], reference, out_dir: Path) -> dict[Path, bool]:
    """Write the three PNGs; returns {path: had data}. window: the rate() window (default 4 steps, >= 1m)."""
    step = max(1.0, (end - start) / MAX_POINTS)
    window = window or promql_duration(max(4 * step, 60.0))
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "latency.png": lambda p: plot_latency(prom, selector, start, end, step, window, budget_ms, p),
        "fps.png": lambda p: plot_fps(prom, selector, start, end, step, p),
        "confidence.png": lambda p: plot_confidence(prom, selector, start, end, step, window, reference, p),
    }
    return {out_dir / name: plot(out_dir / name) for name, plot in plots.items()}
