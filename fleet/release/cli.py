"""`edgecv release`: the Balena release a fleet file asks for. Exit 0 ok, 1 a model not gated, 2 bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

FleetArg = click.Path(path_type=Path, dir_okay=False, exists=True)


@click.group()
def release() -> None:
    """Build the Balena release of a fleet file and print the release tags it must carry."""


@release.command()
@click.argument("fleet_file", type=FleetArg)
@click.option("--format", "fmt", type=click.Choice(["lines", "balena", "json"]), default="lines", show_default=True,
              help="lines: KEY=VALUE; balena: `--release-tag` arguments (KEY VALUE ...); json: an object")
def tags(fleet_file: Path, fmt: str) -> None:
    """Print the release tags the build sets: the same definition the rollout controller matches releases by."""
    from fleet.release.build import ReleaseInputError, release_tags_of

    try:
        found = release_tags_of(fleet_file)
    except ReleaseInputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if fmt == "json":
        click.echo(json.dumps(found))
    elif fmt == "balena":
        click.echo(" ".join(f"{k} {v}" for k, v in found.items()))
    else:
        click.echo("\n".join(f"{k}={v}" for k, v in found.items()))


@release.command()
@click.argument("fleet_file", type=FleetArg)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="the build context folder (replaced as a whole)")
@click.option("--wheel", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="an app wheel already built (default: build one from this repository)")
def build(fleet_file: Path, out: Path, wheel: Path | None) -> None:
    """Assemble the build context for `balena deploy`: compose, Dockerfiles, the rendered and sha256-checked
    model repository, the app wheel, release.json. Refuses a release whose models are not gated."""
    from fleet.release.build import ReleaseInputError, ReleaseRefused
    from fleet.release.build import build as do_build

    try:
        built = do_build(fleet_file, out, wheel)
    except ReleaseInputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ReleaseRefused as exc:
        click.echo(f"refused: {exc}", err=True)
        sys.exit(1)
    click.echo(f"release context in {built.out}: {built.files} files, {built.bytes / 1e6:.1f} MB")
    click.echo("tags: " + ", ".join(f"{k}={v}" for k, v in built.tags.items()))
