"""Gate reports: report.json (machine), report.md (the table a reviewer reads in a PR), confusion_matrix.png."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fleet.gates.accuracy import AccuracyReport, ClassResult, StageResult, latency_passed
from fleet.spec.manifest import ModelManifest


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def to_json(manifest: ModelManifest, acc: AccuracyReport | None, lat: list[StageResult] | None,
            inputs: dict[str, Path]) -> dict:
    passed = (acc is None or acc.passed) and (lat is None or latency_passed(lat))
    doc: dict = {
        "model": manifest.ref,
        "passed": passed,
        "inputs": {name: {"path": str(p), "sha256": _sha256(p)} for name, p in inputs.items()},
    }
    if acc is not None:
        doc["accuracy"] = {
            "passed": acc.passed,
            "failed_classes": acc.failed,
            "iou_threshold": acc.iou_threshold,
            "score_threshold": acc.score_threshold,
            "map50": acc.map50,
            "map50_95": acc.map50_95,
            "classes": [asdict(c) for c in acc.classes],
            "confusion_matrix": {
                "rows": "ground-truth class (last: background = a false positive)",
                "columns": "predicted class (last: background = a missed ground truth)",
                "labels": acc.labels,
                "counts": acc.confusion.tolist(),
            },
        }
    if lat is not None:
        doc["latency"] = {"passed": latency_passed(lat), "stages": [asdict(s) for s in lat]}
    return doc


def shown(acc: AccuracyReport) -> tuple[list[ClassResult], list[str]]:
    """Rows worth a table (gated or with data), and the names of the silent rest (e.g. 70 unused COCO classes)."""
    rows = [c for c in acc.classes if c.gated or c.verdict != "no data"]
    return rows, [c.name for c in acc.classes if c not in rows]


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def latency_rows(lat: list[StageResult]) -> list[tuple[str, str, str, str, str]]:
    return [(s.stage, _fmt(s.budget_ms), _fmt(s.p50_ms), _fmt(s.p95_ms), s.verdict) for s in lat]


def verdict_lines(acc: AccuracyReport) -> list[str]:
    """Why the accuracy gate failed, one line per class (empty when it passed)."""
    lines = [f"{c.name}: " + "; ".join(c.failures) for c in acc.classes if c.gated and c.verdict != "pass"]
    if not any(c.gated for c in acc.classes):
        lines.append("no class was gated (no ground truth and no gates.evaluate): fail closed")
    return lines


def to_markdown(doc: dict, acc: AccuracyReport | None, lat: list[StageResult] | None) -> str:
    lines = [f"## Gates for `{doc['model']}`: {'PASS' if doc['passed'] else 'FAIL'}", ""]
    if acc is not None:
        rows, silent = shown(acc)
        lines += [
            f"### Accuracy: {'PASS' if acc.passed else 'FAIL'}",
            "",
            f"Matching at IoU ≥ {acc.iou_threshold} for predictions with score ≥ {acc.score_threshold}. "
            f"COCO mAP@0.5 {acc.map50:.3f}, mAP@[.5:.95] {acc.map50_95:.3f} (information, all scores).",
            "",
            "| class | GT | TP | FP | FN | precision | recall | F1 | thresholds (P / R / F1) | verdict |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for c in rows:
            t = c.thresholds
            verdict = c.verdict.upper() if c.verdict in ("pass", "fail") else c.verdict
            lines.append(
                f"| {c.name} | {c.gt} | {c.tp} | {c.fp} | {c.fn} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} "
                f"| {t['precision']:.2f} / {t['recall']:.2f} / {t['f1']:.2f} | {verdict} |"
            )
        if silent:
            lines += ["", f"No data, not gated ({len(silent)}): {', '.join(silent)}."]
        failing = verdict_lines(acc)
        if failing:
            lines += ["", "Failing:", "", *[f"- {line}" for line in failing]]
        lines += [
            "",
            "Confusion matrix (`confusion_matrix.png`, counts in `report.json`): rows are the ground-truth class, "
            "columns the predicted class. A prediction overlapping a ground truth of another class is counted "
            "between those two classes; the background row holds false positives, the background column missed "
            "ground truth.",
            "",
        ]
    if lat is not None:
        lines += [
            f"### Latency: {'PASS' if latency_passed(lat) else 'FAIL'}",
            "",
            "| stage | budget ms | p50 ms | p95 ms | verdict |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        lines += [f"| {' | '.join(row)} |" for row in latency_rows(lat)]
        lines += ["", "A stage passes when its p95 is within budget; a budgeted stage not measured fails (missing).", ""]
    return "\n".join(lines)


def confusion_png(acc: AccuracyReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Only classes that appear, plus background: 80 empty COCO rows would drown the signal.
    used = np.flatnonzero(acc.confusion.sum(axis=0) + acc.confusion.sum(axis=1))
    used = np.union1d(used, [len(acc.labels) - 1])
    m = acc.confusion[np.ix_(used, used)]
    labels = [acc.labels[i] for i in used]
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(np.log1p(m), cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    dark = np.log1p(m) > 0.5 * np.log1p(m.max())  # white digits on dark cells
    for (i, j), v in np.ndenumerate(m):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if dark[i, j] else "black")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out: Path, manifest: ModelManifest, acc: AccuracyReport | None, lat: list[StageResult] | None,
          inputs: dict[str, Path]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    doc = to_json(manifest, acc, lat, inputs)
    (out / "report.json").write_text(json.dumps(doc, indent=1))
    (out / "report.md").write_text(to_markdown(doc, acc, lat))
    if acc is not None:
        confusion_png(acc, out / "confusion_matrix.png")
    return doc
