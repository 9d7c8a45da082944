"""`edgecv gates`: the accuracy and latency gates. Exit 0 pass, 1 fail, 2 bad input."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fleet.gates import report as gates_report
from fleet.gates.accuracy import (
    AccuracyReport,
    GatesInputError,
    StageResult,
    confidence_histogram,
    evaluate,
    latency_gate,
    latency_passed,
    load_ground_truth,
    load_latency,
    load_predictions,
)
from fleet.spec.manifest import ModelManifest, load_manifest
from fleet.spec.problems import ValidationFailed

PathArg = click.Path(path_type=Path, dir_okay=False)


@click.command()
@click.argument("manifest", type=PathArg)
@click.option("--ground-truth", type=PathArg, help="held-out set, COCO dataset JSON")
@click.option("--predictions", type=PathArg, help="the model's predictions on it, COCO results JSON")
@click.option("--latency", type=PathArg, help='per-stage latency JSON: {"stages": {STAGE: {"p50_ms", "p95_ms"}}}')
@click.option("--report-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("gate-report"),
              show_default=True, help="where report.json, report.md and confusion_matrix.png go")
@click.option("--reference-out", type=PathArg,
              help="write the reference confidence histogram (YAML, for edgecv models bump --reference)")
def gates(manifest: Path, ground_truth: Path | None, predictions: Path | None, latency: Path | None,
          report_dir: Path, reference_out: Path | None) -> None:
    """Decide whether MANIFEST's model may ship: per-class precision/recall/F1 and per-stage latency p95.

    Exit status: 0 every gate passes, 1 a gate fails (the report says which), 2 bad input.
    """
    if bool(ground_truth) != bool(predictions):
        _bad("--ground-truth and --predictions go together")
    if not ground_truth and not latency:
        _bad("give --ground-truth with --predictions, --latency, or both")
    if reference_out and not predictions:
        _bad("--reference-out needs --predictions")
    try:
        m = load_manifest(manifest)
    except ValidationFailed as exc:
        _bad(f"invalid manifest:\n{exc}")
    acc = lat = None
    inputs: dict[str, Path] = {}
    try:
        if ground_truth and predictions:
            data = load_ground_truth(ground_truth, m.classes)
            preds = load_predictions(predictions, data)
            acc = evaluate(m, data, preds)
            inputs |= {"ground_truth": ground_truth, "predictions": predictions}
        if latency:
            lat = latency_gate(m, load_latency(latency))
            inputs["latency"] = latency
    except GatesInputError as exc:
        _bad(str(exc))
    doc = gates_report.write(report_dir, m, acc, lat, inputs)
    console = Console(width=120)
    if acc is not None:
        _print_accuracy(console, m, acc)
    if lat is not None:
        _print_latency(console, m, lat)
    if reference_out:
        scores = preds.score[preds.score >= m.gates.score_threshold]
        if len(scores):
            reference_out.parent.mkdir(parents=True, exist_ok=True)
            reference_out.write_text(yaml.safe_dump(confidence_histogram(scores), sort_keys=False))
            console.print(f"reference confidence histogram ({len(scores)} predictions) in {reference_out}")
        else:
            console.print(f"[red]no prediction scores >= {m.gates.score_threshold}: {reference_out} not written[/]")
    console.print(f"{'PASS' if doc['passed'] else 'FAIL'}: report in {report_dir}/")
    sys.exit(0 if doc["passed"] else 1)


def _print_accuracy(console: Console, m: ModelManifest, acc: AccuracyReport) -> None:
    rows, silent = gates_report.shown(acc)
    table = Table(title=f"{m.ref}: accuracy (IoU ≥ {acc.iou_threshold}, score ≥ {acc.score_threshold})")
    for col in ("class", "GT", "TP", "FP", "FN", "P", "R", "F1", "min P/R/F1", "verdict"):
        table.add_column(col, justify="left" if col in ("class", "verdict") else "right")
    for c in rows:
        t = c.thresholds
        style = {"pass": "green", "fail": "red"}.get(c.verdict, "red" if c.gated else "dim")
        table.add_row(escape(c.name), str(c.gt), str(c.tp), str(c.fp), str(c.fn), f"{c.precision:.3f}", f"{c.recall:.3f}",
                      f"{c.f1:.3f}", f"{t['precision']:.2f}/{t['recall']:.2f}/{t['f1']:.2f}",
                      f"[{style}]{c.verdict}[/]")
    console.print(table)
    if silent:
        console.print(f"no data, not gated: {len(silent)} class(es)")
    console.print(f"mAP@0.5 {acc.map50:.3f}   mAP@[.5:.95] {acc.map50_95:.3f} (information)")
    for line in gates_report.verdict_lines(acc):
        console.print(f"  [red]fail[/] {escape(line)}")


def _print_latency(console: Console, m: ModelManifest, lat: list[StageResult]) -> None:
    table = Table(title=f"{m.ref}: latency budget ({'pass' if latency_passed(lat) else 'FAIL'})")
    for col in ("stage", "budget ms", "p50 ms", "measured p95 ms", "verdict"):
        table.add_column(col, justify="left" if col in ("stage", "verdict") else "right")
    for row in gates_report.latency_rows(lat):
        style = {"pass": "green", "info": "dim"}.get(row[-1], "red")
        table.add_row(*row[:-1], f"[{style}]{row[-1]}[/]")
    console.print(table)


def _bad(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.command(name="eval")
@click.argument("manifest", type=PathArg)
@click.option("--ground-truth", type=PathArg, default=None,
              help="held-out set, COCO JSON with images[].file_name and images[].site "
                   "(default: eval/ground_truth.json beside the manifest)")
@click.option("--images", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="folder of the images (default: images/ beside the ground truth)")
@click.option("--runtime", type=click.Choice(["triton", "onnxruntime"]), default="triton", show_default=True,
              help="Triton serving the rendered repository (load time measured), or onnxruntime for CPU CI")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="report folder (default: reports/<version>/ beside the manifest); replaced as a whole")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="registry root file:// uris resolve against (default: the folder holding models/)")
def eval_cmd(manifest: Path, ground_truth: Path | None, images: Path | None, runtime: str, out: Path | None,
             root: Path | None) -> None:
    """Run MANIFEST's exact artifact (sha256 checked) over its held-out set with the device's preprocessing
    and decoder, then judge it: per class, per site, support, load time. Writes report.json, report.md,
    predictions.json and confusion_matrix.png.

    Exit status: 0 the gates pass, 1 a gate fails (the report says which), 2 bad input (nothing written).
    """
    from fleet.gates.eval import run_eval
    from fleet.gates.evalset import load_eval_set
    from fleet.spec.base import registry_root_of

    try:
        m = load_manifest(manifest, root)
    except ValidationFailed as exc:
        _bad(f"invalid manifest:\n{exc}")
    root = root or registry_root_of(manifest)
    ground_truth = ground_truth or manifest.parent / "eval" / "ground_truth.json"
    out = out or manifest.parent / "reports" / m.version
    try:
        evalset = load_eval_set(ground_truth, m.classes, images)
        outcome = run_eval(m, manifest, evalset, out, root, runtime)
    except GatesInputError as exc:
        _bad(str(exc))
    console = Console(width=120)
    _print_accuracy(console, m, outcome.acc)
    doc = outcome.doc
    console.print(f"artifact sha256 {doc['artifact']['sha256']}; evaluation set digest {doc['eval_set']['digest']}")
    console.print(f"{doc['throughput']['images']} images in {doc['throughput']['seconds']} s "
                  f"({outcome.images_per_s:.1f} images/s, {runtime}); load time {doc['load_time']['seconds']} s "
                  f"({doc['load_time']['verdict']})")
    console.print(f"{'PASS' if outcome.passed else 'FAIL'}: report in {out}/")
    sys.exit(0 if outcome.passed else 1)
