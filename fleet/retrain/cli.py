"""`edgecv retrain export|trigger` and `edgecv models bump`: the retraining loop's commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fleet.retrain.bump import BumpError, bump
from fleet.retrain.loop import RetrainError, export_dataset, trigger
from fleet.spec.problems import ValidationFailed


@click.group()
def retrain() -> None:
    """Hand reviewed samples to the training pipeline."""


@retrain.command("export")
@click.option("--corrections", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="COCO JSON of reviewed items (edgecv review export)")
@click.option("--images", "images_dir", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="dataset directory to write")
def export_cmd(corrections: Path, images_dir: Path, out: Path) -> None:
    """Write a COCO dataset (images + annotations) of the reviewed samples, with provenance."""
    try:
        summary = export_dataset(corrections, images_dir, out)
    except (RetrainError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"wrote {out}: {summary['images']} images, {summary['annotations']} annotations")


@retrain.command("trigger")
@click.argument("dataset", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--command", help="command to run; the dataset path is appended and in $EDGECV_DATASET")
@click.option("--webhook", help="URL to POST a repository_dispatch-style JSON to")
def trigger_cmd(dataset: Path, command: str | None, webhook: str | None) -> None:
    """Tell the ML pipeline a dataset is ready."""
    try:
        click.echo(trigger(dataset, command, webhook))
    except RetrainError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@click.group()
def models() -> None:
    """The model registry under models/."""


@models.command("bump")
@click.argument("manifest", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--artifact", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True)
@click.option("--gate-report", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="the --report-dir of a passing `edgecv gates` run")
@click.option("--reference", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="reference confidence histogram (edgecv gates --reference-out)")
@click.option("--part", type=click.Choice(["major", "minor", "patch"]), default="minor", show_default=True)
def bump_cmd(manifest: Path, artifact: Path, gate_report: Path, reference: Path | None, part: str) -> None:
    """Write the next manifest version for a new artifact that passed its gates."""
    try:
        version = bump(manifest, artifact, gate_report, reference, part)
    except ValidationFailed as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    except BumpError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{manifest}: bumped to {version}; run `edgecv validate` and open a pull request")
