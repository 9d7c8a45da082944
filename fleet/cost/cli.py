"""`edgecv cost`: the TCO table (rich) and the cumulative-cost plot (matplotlib) of fleet.cost.model."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from fleet.cost.model import SCENARIOS, CostConfig, CostConfigError, Scenario, evaluate, load_config

# --- output --------------------------------------------------------------------------------------------


def _usd(x: float) -> str:
    return f"${x:,.0f}"


def print_table(cfg: CostConfig, results: list[Scenario]) -> None:
    from rich.console import Console
    from rich.table import Table

    f = cfg.fleet
    devices = f.sites * f.devices_per_site
    t = Table(title=f"Total cost of ownership over {cfg.years} years: {f.sites} sites, {devices} devices, "
                    f"{devices * f.cameras_per_device} cameras")
    t.add_column("")
    for r in results:
        t.add_column(r.name, justify="right")
    for option in ("edge", "cloud"):
        t.add_section()
        for line in getattr(results[0], option).lines:
            t.add_row(f"{option}: {line}", *(_usd(getattr(r, option).lines[line]) for r in results))
        t.add_row(f"[bold]{option}: total over {cfg.years} years",
                  *(f"[bold]{_usd(getattr(r, 'tco_' + option))}" for r in results))
    t.add_section()
    t.add_row("cloud GPU instances", *(str(r.gpu_instances) for r in results))
    t.add_row("upstream GB / month", *(f"{r.upstream_gb_per_month:,.0f}" for r in results))
    t.add_row("cloud - edge over the horizon", *(_usd(r.tco_cloud - r.tco_edge) for r in results))
    t.add_row("[bold]break-even month", *(
        f"[bold]{r.break_even_month}" if r.break_even_month is not None else f"none in {cfg.years} y" for r in results))
    Console().print(t)


def plot(cfg: CostConfig, results: list[Scenario], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    years = list(range(cfg.years + 1))
    by = {r.name: r for r in results}
    fig, ax = plt.subplots(figsize=(9, 5))
    for option, color in (("edge", "tab:blue"), ("cloud", "tab:orange")):
        def series(name: str, option: str = option) -> list[float]:
            return [getattr(by[name], option).cumulative(12 * y) for y in years]

        ax.fill_between(years, series("low"), series("high"), color=color, alpha=0.15, label=f"{option} low-high")
        ax.plot(years, series("typical"), color=color, marker="o", label=f"{option} typical")
    typical = by["typical"].break_even_month
    if typical is not None:
        ax.axvline(typical / 12, color="grey", linestyle="--", label=f"break-even (typical): month {typical}")
    ax.set_xlabel("years")
    ax.set_ylabel("cumulative cost (USD)")
    ax.set_title("Edge fleet vs cloud inference: cumulative cost")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: _usd(v)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@click.command("cost")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="YAML overriding fleet/cost/defaults.yaml (any subset of its keys)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write cost.png and cost.json here")
def cost(config_path: Path | None, out_dir: Path | None) -> None:
    """Edge fleet TCO against cloud inference, low / typical / high, with the break-even month."""
    try:
        cfg = load_config(config_path)
    except CostConfigError as exc:
        for p in exc.problems:
            click.echo(str(p), err=True)
        sys.exit(2)
    results = [evaluate(cfg, s) for s in SCENARIOS]
    print_table(cfg, results)
    for r in results:
        when = f"month {r.break_even_month}" if r.break_even_month is not None else f"not within {cfg.years} years"
        click.echo(f"break-even ({r.name}): {when}")
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        plot(cfg, results, out_dir / "cost.png")
        (out_dir / "cost.json").write_text(json.dumps(
            {"config": cfg.model_dump(), "scenarios": [asdict(r) for r in results]}, indent=2) + "\n")
        click.echo(f"wrote {out_dir / 'cost.png'} and {out_dir / 'cost.json'}")
