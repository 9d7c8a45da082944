"""`edgecv rollout`: GitOps rollouts of fleets/*.yaml through Balena release pinning.

The API key comes from $BALENA_API_KEY; the API from --api-url / $EDGECV_BALENA_API (default balena-cloud);
Prometheus for the analyses from --prometheus / $EDGECV_PROMETHEUS_URL or the fleet file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from fleet.repo import REPO_ROOT
from fleet.spec.durations import parse_duration
from fleet.spec.fleetspec import load_fleet


def _fleet_files(paths: tuple[Path, ...]) -> list[Path]:
    if paths:
        return list(paths)
    files = sorted([*(REPO_ROOT / "fleets").glob("*.yaml"), *(REPO_ROOT / "fleets").glob("*.yml")])
    if not files:
        raise click.UsageError("no fleet files under fleets/")
    return files


class Ctx:
    def __init__(self, api_url: str | None, prometheus: str | None, batch: int):
        self.api_url, self.prometheus, self.batch = api_url, prometheus, batch

    def controller(self, path: Path, verbose: bool = True, gated: bool = True):
        from fleet.gates.binding import require_gated
        from fleet.rollout.analysis import Analyzer, Prometheus
        from fleet.rollout.balena_client import connect
        from fleet.rollout.controller import Controller
        from fleet.rollout.planner import Desired
        from fleet.spec.problems import ValidationFailed

        try:
            spec, manifests = load_fleet(path)
        except ValidationFailed as exc:
            raise click.ClickException(f"invalid fleet file:\n{exc}") from exc
        # Moving forward needs every model gated (PlanRefused otherwise); status, abort and rollback never do.
        self.gates = require_gated(path, manifests) if gated else []
        prom_url = self.prometheus or spec.analysis.prometheus
        analyzer = Analyzer(Prometheus(prom_url), spec.analysis, list(manifests.values())) if prom_url else None
        log = (lambda line: click.echo(f"  {line}")) if verbose else (lambda line: None)
        sdk = connect(self.api_url, log=lambda line: click.echo(f"  api: {line}", err=True))
        return Controller(sdk, Desired.from_spec(spec, manifests), analyzer, batch=self.batch,
                          log=log)


def _errors(fn):
    """API and plan errors as one clear line and a non-zero exit, not a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from balena.exceptions import RequestError

        from fleet.rollout.balena_client import BalenaUnavailable
        from fleet.rollout.executor import LeaseHeld
        from fleet.rollout.observe import FleetNotFound
        from fleet.rollout.planner import PlanRefused

        try:
            return fn(*args, **kwargs)
        except PlanRefused as exc:
            click.echo(f"refused: {exc}", err=True)
            sys.exit(2)
        except LeaseHeld as exc:
            click.echo(f"not acting: {exc}", err=True)
            sys.exit(3)
        except (BalenaUnavailable, FleetNotFound) as exc:
            click.echo(f"error: {exc} (nothing is lost: the next run resumes)", err=True)
            sys.exit(1)
        except RequestError as exc:
            click.echo(f"error: the balena API refused a request: HTTP {exc.status_code}: {str(exc.body)[:300]}", err=True)
            sys.exit(1)

    return wrapper


@click.group()
@click.option("--api-url", envvar="EDGECV_BALENA_API", help="balena API base URL (default: balena-cloud)")
@click.option("--prometheus", envvar="EDGECV_PROMETHEUS_URL", help="Prometheus base URL for the analyses")
@click.option("--batch-size", default=200, show_default=True, type=click.IntRange(1, 1000),
              help="device ids per pin request")
@click.pass_context
def rollout(ctx: click.Context, api_url: str | None, prometheus: str | None, batch_size: int) -> None:
    """Roll a fleet file's release out: canary, pilot, waves, with analysis and rollback."""
    ctx.obj = Ctx(api_url, prometheus, batch_size)


fleets_arg = click.argument("fleets", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))


@rollout.command()
@fleets_arg
@click.option("--format", "fmt", type=click.Choice(["table", "markdown"]), default="table")
@click.pass_obj
@_errors
def plan(obj: Ctx, fleets: tuple[Path, ...], fmt: str) -> None:
    """Show what a reconcile pass would change (read-only)."""
    from fleet.gates.binding import render, render_refused
    from fleet.rollout.planner import PlanRefused
    from fleet.rollout.report import render_plan

    failed = False
    for path in _fleet_files(fleets):
        try:
            c = obj.controller(path, verbose=False)
        except PlanRefused as exc:  # models not gated: the plan comment says which and why
            failed = True
            click.echo(render_refused(path, str(exc), fmt == "markdown"))
            continue
        gates = render(obj.gates, fmt == "markdown")  # after the plan; waivers in bold
        observed = c.observe()
        try:
            result = c.plan(observed)
            click.echo(render_plan(c.desired, observed, result.actions, fmt == "markdown"))
        except PlanRefused as exc:
            failed = True
            click.echo(render_plan(c.desired, observed, [], fmt == "markdown", error=str(exc)))
        except ValueError as exc:  # e.g. a damaged rollout tag: this fleet's comment says so, the others render
            failed = True
            click.echo(render_plan(c.desired, observed, [], fmt == "markdown", error=f"{type(exc).__name__}: {exc}"))
        click.echo(gates)
    sys.exit(2 if failed else 0)


def reconcile_one(obj: Ctx, path: Path) -> int:
    """One fleet's pass, in isolation: whatever goes wrong is reported for this fleet and turned into an exit
    code (2 refused, 1 failed, 0 fine or leased by another run), so the other fleets are still reconciled."""
    from balena.exceptions import RequestError

    from fleet.rollout.balena_client import BalenaUnavailable
    from fleet.rollout.executor import LeaseHeld
    from fleet.rollout.observe import FleetNotFound
    from fleet.rollout.planner import PlanRefused
    from fleet.rollout.report import describe

    try:
        result = obj.controller(path).reconcile()
    except PlanRefused as exc:
        click.echo(f"  refused: {exc}", err=True)
        return 2
    except LeaseHeld as exc:
        click.echo(f"  not acting: {exc}")
        return 0
    except (BalenaUnavailable, FleetNotFound) as exc:
        click.echo(f"  error: {exc} (nothing is lost: the next run resumes)", err=True)
        return 1
    except RequestError as exc:
        click.echo(f"  error: the balena API refused a request: HTTP {exc.status_code}: {str(exc.body)[:300]}", err=True)
        return 1
    except click.ClickException as exc:
        click.echo(f"  error: {exc.format_message()}", err=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - one fleet's surprise must not stop the others (or --watch)
        click.echo(f"  error: unexpected {type(exc).__name__} for {path.name}: {exc}", err=True)
        return 1
    for a in result.actions:
        kind, detail = describe(a, result.observed)
        if kind in ("wait", "note"):
            click.echo(f"  {kind}: {detail}")
    return 0


@rollout.command()
@fleets_arg
@click.option("--watch", is_flag=True, help="keep reconciling every --interval")
@click.option("--interval", default="5m", show_default=True, help="time between passes with --watch")
@click.pass_obj
def apply(obj: Ctx, fleets: tuple[Path, ...], watch: bool, interval: str) -> None:
    """One reconcile pass per fleet (or a loop with --watch). A fleet that fails does not stop the others;
    exit 2 if a plan was refused, 1 if a fleet failed, 0 otherwise (a lease held by another run included)."""
    pause = parse_duration(interval).total_seconds()
    while True:
        worst = 0
        for path in _fleet_files(fleets):
            click.echo(f"{path.name}:")
            worst = max(worst, reconcile_one(obj, path))
        if not watch:
            sys.exit(worst)
        time.sleep(pause)


@rollout.command()
@fleets_arg
@click.option("--format", "fmt", type=click.Choice(["table", "markdown"]), default="table")
@click.pass_obj
@_errors
def status(obj: Ctx, fleets: tuple[Path, ...], fmt: str) -> None:
    """Stages, devices per release, soak time left, last analysis."""
    from fleet.rollout.report import render_status

    for path in _fleet_files(fleets):
        c = obj.controller(path, verbose=False, gated=False)
        click.echo(render_status(c.desired, c.observe(), c.clock(), fmt == "markdown"))


def _command(name: str, help_text: str):
    @rollout.command(name=name, help=help_text)
    @click.argument("fleet", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--by", envvar="GITHUB_ACTOR", default=None, help="who asks (recorded); default $USER")
    @click.pass_obj
    @_errors
    def cmd(obj: Ctx, fleet: Path, by: str | None) -> None:
        import getpass

        c = obj.controller(fleet, gated=name in ("promote", "resume"))
        c.command(name, by or getpass.getuser())
        click.echo(f"{name}: done")

    return cmd


promote = _command("promote", "Skip the rest of the current stage's soak (recorded with who asked).")
abort = _command("abort", "Stop the rollout where it is; devices stay as they are until resume or rollback.")
rollback_cmd = _command("rollback", "Pin the upgraded devices back to the fleet's previous release.")
resume = _command("resume", "Continue a halted or paused rollout (or retry a rolled-back one from the canary).")


@rollout.command()
@click.argument("fleet_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--devices", default=100, show_default=True, type=click.IntRange(1, 100_000),
              help="simulated devices in the fleet")
@click.option("--regression", multiple=True, metavar="STAGE:METRIC=VALUE",
              help="from STAGE on, devices on the new release report METRIC=VALUE "
                   "(inference_ms, fps, confidence, psi, error_ratio, restarts); repeatable")
@click.option("--offline", default=0.0, show_default=True, type=float, help="share of devices that stay offline")
@click.option("--human-pin", multiple=True, metavar="STAGE",
              help="when STAGE starts, a person sets one of its devices to follow the fleet in the dashboard")
def rehearse(fleet_file: Path, devices: int, regression: tuple[str, ...], offline: float,
             human_pin: tuple[str, ...]) -> None:
    """Rehearse the fleet file's rollout on a simulated fleet (a local balena API double, device metrics in a
    real Prometheus, time compressed) and print the timeline. Exit 0 if it ends done, 1 otherwise."""
    import signal

    from fleet.rollout.rehearse import RehearsalError
    from fleet.rollout.rehearse import rehearse as run
    from fleet.spec.problems import ValidationFailed

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the local Prometheus is stopped too
    try:
        outcome = run(fleet_file, devices, regression, offline, human_pin, out=click.echo)
    except RehearsalError as exc:
        raise click.UsageError(str(exc)) from exc
    except ValidationFailed as exc:
        raise click.ClickException(f"invalid fleet file:\n{exc}") from exc
    sim_h = outcome.simulated.total_seconds() / 3600
    click.echo(f"\n{outcome.status}: {devices} device(s), {sim_h:.0f} h simulated in {outcome.wall_s:.1f} s "
               f"({outcome.api_requests} API requests, {outcome.samples} samples written to Prometheus)")
    sys.exit(0 if outcome.status == "done" else 1)
