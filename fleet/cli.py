"""The `edgecv` command: sub-commands by noun, each imported only when used (start-up stays fast)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import click

# noun -> "module:attribute" of a click command or group.
COMMANDS = {
    "validate": "fleet.cli:validate",
    "gates": "fleet.gates.cli:gates",
    "eval": "fleet.gates.cli:eval_cmd",
    "release": "fleet.release.cli:release",
    "triton": "fleet.triton.cli:triton",
    "app": "app.cli:app_group",
    "evidence": "app.evidence.cli:evidence",
    "rollout": "fleet.rollout.cli:rollout",
    "review": "fleet.review.cli:review",
    "retrain": "fleet.retrain.cli:retrain",
    "models": "fleet.retrain.cli:models",
    "cost": "fleet.cost.cli:cost",
    "telemetry": "fleet.telemetry.cli:telemetry",
    "health": "app.health.cli:health",
    "sigv4-forward": "app.cloud.cli:sigv4_forward",
    "demo": "fleet.demo:demo",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n in COMMANDS if self._available(n))

    @staticmethod
    def _available(name: str) -> bool:
        module = COMMANDS[name].split(":")[0]
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package that does not exist yet
            return False

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not self._available(name):
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgecv-fleet")
def main() -> None:
    """edgecv: take an edge CV model from a pull request to a Jetson fleet."""


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["model-manifest", "fleet"]), default=None,
              help="schema for files without a kind: field of their own")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="registry root holding models/ and fleets/ (default: the current directory)")
def validate(paths: tuple[Path, ...], kind: str | None, root: Path | None) -> None:
    """Check model manifests and fleet files: the schema comes from each file's kind: field.

    With no PATHS, checks models/**/manifest.yaml and fleets/*.yaml under the root. Every model a fleet
    file releases must be gated: a passing `edgecv eval` report for the manifest's artifact sha256, or a
    gates.waiver not past its date. Prints one problem per line as FILE:LINE: FIELD: MESSAGE and exits 1 if any.
    """
    from fleet.gates.binding import binding_problems
    from fleet.spec.validate import validate_paths

    files, problems = validate_paths(list(paths), root=root, kind=kind)
    # Gate binding: what a fleet releases must carry a passing report for its sha256, or a dated waiver.
    problems += binding_problems([f for f in files if not any(p.path == f for p in problems)], root)
    for p in problems:
        click.echo(str(p), err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) in {len(files)} file(s)", err=True)
        sys.exit(1)
    click.echo(f"ok: {len(files)} file(s) valid")


if __name__ == "__main__":
    main()
