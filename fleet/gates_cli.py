"""`edgecv gates`: the accuracy and latency gates. Exit 0 pass, 1 fail, 2 bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import yaml
from rich.console import Console
from rich.table import Table

from fleet import gates_report
from fleet.gates import (
    GatesInputError,
    confidence_histogram,
    evaluate,
    latency_gate,
    load_ground_truth,
    load_latency,
    load_predictions,
)
from fleet.manifest import load_manifest
from fleet.validation import ValidationFailed

PathArg = click.Path(path_type=Path, dir_okay=False)


@click.command()
@click.argument("manifest", type=PathArg)
@click.option("--ground-truth", type=PathArg, help="held-out set, COCO dataset JSON")
@click.option("--predictions", type=PathArg, help="the model's predictions on it, COCO results JSON")
@click.option("--latency", type=PathArg, help='per-stage latency JSON: {"stages": {STAGE: {"p50_ms", "p95_ms"}}}')
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("gate-report"),
              show_default=True)
@click.option("--reference-out", type=click.Path(path_type=Path, dir_okay=False),
              help="write the reference confidence histogram (for the manifest, via edgecv models bump)")
def gates(manifest: Path, ground_truth: Path | None, predictions: Path | None, latency: Path | None,
          report_dir: Path, reference_out: Path | None) -> None:
    """Decide whether MANIFEST's model may ship: per-class precision/recall/F1 and per-stage latency."""
    console = Console(width=120)
    if bool(ground_truth) != bool(predictions):
        _bad("--ground-truth and --predictions go together")
    if not ground_truth and not latency:
        _bad("give --ground-truth/--predictions, --latency, or both")
    try:
        m = load_manifest(manifest)
    except ValidationFailed as exc:
        _bad(str(exc))
    try:
        acc = lat = None
        inputs: dict[str, Path] = {}
        if ground_truth:
            data = load_ground_truth(ground_truth, m.classes)
            preds = load_predictions(predictions, data)
            acc = evaluate(m, data, preds)
            inputs |= {"ground_truth": ground_truth, "predictions": predictions}
            if reference_out:
                hist = confidence_histogram(preds.score[preds.score >= m.gates.score_threshold])
                reference_out.write_text(yaml.safe_dump(hist, sort_keys=False))
        if latency:
            lat = latency_gate(m, load_latency(latency))
            inputs["latency"] = latency
    except GatesInputError as exc:
        _bad(str(exc))
    doc = gates_report.write(report_dir, m, acc, lat, inputs)
    if acc is not None:
        table = Table(title=f"{m.ref}: accuracy (IoU ≥ {acc.iou_threshold}, score ≥ {acc.score_threshold})")
        for col in ("class", "GT", "TP", "FP", "FN", "P", "R", "F1", "verdict"):
            table.add_column(col, justify="left" if col in ("class", "verdict") else "right")
        for c in acc.classes:
            table.add_row(c.name, str(c.gt), str(c.tp), str(c.fp), str(c.fn), f"{c.precision:.3f}",
                          f"{c.recall:.3f}", f"{c.f1:.3f}", c.verdict)
        console.print(table)
        console.print(f"mAP@0.5 {acc.map50:.3f}   mAP@[.5:.95] {acc.map50_95:.3f} (information)")
        for c in acc.classes:
            if c.failures and c.gated:
                console.print(f"  {c.name}: " + "; ".join(c.failures))
    if lat is not None:
        table = Table(title=f"{m.ref}: latency budget")
        for col in ("stage", "budget ms", "p50 ms", "p95 ms", "verdict"):
            table.add_column(col, justify="left" if col in ("stage", "verdict") else "right")
        for row in gates_report.latency_rows(lat):
            table.add_row(*row)
        console.print(table)
    console.print(f"{'PASS' if doc['passed'] else 'FAIL'}: report in {report_dir}/")
    sys.exit(0 if doc["passed"] else 1)


def _bad(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)
