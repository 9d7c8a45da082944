"""`edgecv triton`: render a Triton model repository from a model manifest."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fleet.spec.manifest import load_manifest
from fleet.spec.problems import ValidationFailed
from fleet.triton.render import BACKENDS, Backend, RenderError, render


@click.group()
def triton() -> None:
    """Triton model repositories for model manifests."""


@triton.command("render")
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="model repository directory")
@click.option("--backend", type=click.Choice(BACKENDS), default="onnxruntime", show_default=True)
@click.option("--artifact", type=click.Path(path_type=Path), help="local copy of a non-local (s3://) artifact")
def render_cmd(manifest_path: Path, out: Path, backend: Backend, artifact: Path | None) -> None:
    """Write the Triton model repository for MANIFEST under --out."""
    try:
        manifest = load_manifest(manifest_path)
        model_dir = render(manifest, out, backend, artifact)
    except (ValidationFailed, RenderError) as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(f"rendered {manifest.ref} ({backend}) -> {model_dir}")

