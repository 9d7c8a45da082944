"""`edgecv gates`: exact figures on hand-built data, pycocotools-equal mAP, every error path."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from bench.gates import ours, pycoco, synthetic
from fleet.cli import main
from tests.unit.test_validate import manifest_dict


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    d = manifest_dict("s3://bucket/tiny.onnx")
    d["classes"] = ["person", "car", "dog"]
    d["gates"] = {"iou_threshold": 0.5, "score_threshold": 0.3,
                  "classes": {"car": {"precision": 0.5, "recall": 0.5, "f1": 0.5}}}
    d["latency_budget_ms"] = {"capture": 33, "preprocess": 10, "inference": 100, "postprocess": 20,
                              "dispatch": 50, "total": 213}
    path = tmp_path / "models" / "tiny" / "manifest.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(d))
    return path


GT = {
    "images": [{"id": 1}, {"id": 2}],
    "categories": [{"id": 10, "name": "person"}, {"id": 20, "name": "car"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 10, "bbox": [0, 0, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": 10, "bbox": [50, 50, 10, 10]},
        {"id": 3, "image_id": 1, "category_id": 20, "bbox": [100, 100, 20, 20]},
        {"id": 4, "image_id": 2, "category_id": 20, "bbox": [0, 0, 20, 20]},
        {"id": 5, "image_id": 2, "category_id": 10, "bbox": [200, 200, 30, 30], "iscrowd": 1},
    ],
}
PRED = [
    {"image_id": 1, "category_id": 10, "bbox": [0, 0, 10, 10], "score": 0.9},  # TP person (gt 1)
    {"image_id": 1, "category_id": 10, "bbox": [1, 1, 10, 10], "score": 0.8},  # FP person: gt 1 taken
    {"image_id": 1, "category_id": 10, "bbox": [100, 100, 20, 20], "score": 0.7},  # person on the car: confusion
    {"image_id": 1, "category_id": 10, "bbox": [300, 300, 5, 5], "score": 0.2},  # under the score threshold
    {"image_id": 2, "category_id": 20, "bbox": [1, 1, 20, 20], "score": 0.6},  # TP car (gt 4)
    {"image_id": 2, "category_id": 10, "bbox": [205, 205, 10, 10], "score": 0.5},  # on a crowd region: ignored
]
# person: TP 1; FP 2 (the duplicate + the confusion); FN 1 (gt 2) -> P 1/3, R 1/2, F1 2/(2+2+1) = 0.4
# car:    TP 1; FP 0; FN 1 (gt 3, confused as person) -> P 1, R 0.5, F1 2/3
# matrix rows GT, cols predicted [person, car, dog, background]:
#   person: [1, 0, 0, 1]   car: [1, 1, 0, 0]   background: [1, 0, 0, 0]


def run(manifest: Path, tmp_path: Path, gt=GT, pred=PRED, *extra: str):
    (tmp_path / "gt.json").write_text(gt if isinstance(gt, str) else json.dumps(gt))
    (tmp_path / "pred.json").write_text(pred if isinstance(pred, str) else json.dumps(pred))
    return CliRunner().invoke(main, ["gates", str(manifest), "--ground-truth", str(tmp_path / "gt.json"),
                                     "--predictions", str(tmp_path / "pred.json"),
                                     "--report-dir", str(tmp_path / "report"), *extra])


def test_exact_per_class_figures_and_confusion_matrix(manifest: Path, tmp_path: Path):
    result = run(manifest, tmp_path)
    assert result.exit_code == 1, result.output  # person fails the default thresholds
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    classes = {c["name"]: c for c in report["accuracy"]["classes"]}
    assert set(classes) == {"person", "car"}  # dog: neither labelled nor predicted
    p, c = classes["person"], classes["car"]
    assert (p["tp"], p["fp"], p["fn"]) == (1, 2, 1)
    assert p["precision"] == pytest.approx(1 / 3) and p["recall"] == 0.5 and p["f1"] == pytest.approx(0.4)
    assert (c["tp"], c["fp"], c["fn"]) == (1, 0, 1) and c["f1"] == pytest.approx(2 / 3)
    assert p["verdict"] == "fail" and c["verdict"] == "pass"  # car has lowered thresholds
    assert report["accuracy"]["confusion_matrix"]["counts"] == [
        [1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    assert report["passed"] is False and report["accuracy"]["failed_classes"] == ["person"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| person | 2 | 1 | 2 | 1 | 0.333 | 0.500 | 0.400 |" in md and "FAIL" in md
    png = matplotlib.image.imread(tmp_path / "report" / "confusion_matrix.png")
    assert png.shape[0] > 100 and png.shape[1] > 100


def test_all_gates_pass_exits_zero_and_writes_reference(manifest: Path, tmp_path: Path):
    good = [p for p in PRED if p["score"] in (0.9, 0.6)] + [
        {"image_id": 1, "category_id": 10, "bbox": [50, 50, 10, 10], "score": 0.95},
        {"image_id": 1, "category_id": 20, "bbox": [100, 100, 20, 20], "score": 0.85}]
    result = run(manifest, tmp_path, GT, good, "--reference-out", str(tmp_path / "ref.yaml"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "report" / "report.json").read_text())["passed"] is True
    ref = yaml.safe_load((tmp_path / "ref.yaml").read_text())
    assert sum(ref["counts"]) == 4 and len(ref["edges"]) == 21


def test_a_gated_class_without_predictions_fails_closed(manifest: Path, tmp_path: Path):
    result = run(manifest, tmp_path, GT, [p for p in PRED if p["category_id"] == 10])
    assert result.exit_code == 1
    car = next(c for c in json.loads((tmp_path / "report" / "report.json").read_text())["accuracy"]["classes"]
               if c["name"] == "car")
    assert car["recall"] == 0 and car["verdict"] == "fail"


@pytest.mark.parametrize("gt, pred, message", [
    ("{bad json", PRED, "gt.json:1:2: malformed JSON in ground truth"),
    (GT, "[{]", "pred.json:1:3: malformed JSON in predictions"),
    (GT, [{**PRED[0], "image_id": 99}], "unknown image_id 99"),
    (GT, [{**PRED[0], "category_id": 30}], "unknown category_id 30"),
    (GT, [{**PRED[0], "score": 1.5}], "score must be a number in [0, 1]"),
    (GT, [{**PRED[0], "bbox": [1, 2, 3]}], "bbox must be [x, y, w, h]"),
    ({**GT, "categories": [*GT["categories"], {"id": 30, "name": "horse"}]}, PRED, "'horse' is not a class"),
    ({**GT, "annotations": [{**GT["annotations"][0], "image_id": 7}]}, PRED, "unknown image_id 7"),
    ({"images": []}, PRED, "must be a COCO dataset"),
    (GT, {"not": "a list"}, "must be a COCO results list"),
])
def test_bad_input_exits_2_with_a_clear_message(manifest: Path, tmp_path: Path, gt, pred, message):
    result = run(manifest, tmp_path, gt, pred)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "report").exists()


def test_missing_file_and_bad_manifest_exit_2(manifest: Path, tmp_path: Path):
    result = CliRunner().invoke(main, ["gates", str(manifest), "--ground-truth", str(tmp_path / "nope.json"),
                                       "--predictions", str(tmp_path / "nope2.json")])
    assert result.exit_code == 2 and "file not found" in result.output
    manifest.write_text(manifest.read_text().replace("version: 1.2.3", "version: one"))
    result = run(manifest, tmp_path)
    assert result.exit_code == 2 and "not a semantic version" in result.output


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_equals_pycocotools(seed: int):
    gt, preds = synthetic(60, 12, n_classes=4, seed=seed)
    # Ties and duplicates exercise the tie-breaking rules: repeat some predictions exactly.
    preds += preds[::7]
    ref = pycoco(gt, preds)
    got = ours(gt, preds)
    assert got == pytest.approx(ref, abs=1e-12)


def test_latency_gate_table_and_verdicts(manifest: Path, tmp_path: Path):
    stages = {"capture": {"p50_ms": 10, "p95_ms": 20}, "preprocess": {"p50_ms": 3, "p95_ms": 4},
              "inference": {"p50_ms": 80, "p95_ms": 140}, "postprocess": {"p50_ms": 2, "p95_ms": 3},
              "dispatch": {"p50_ms": 1, "p95_ms": 2}, "batch_wait": {"p50_ms": 5, "p95_ms": 9}}
    (tmp_path / "lat.json").write_text(json.dumps({"stages": stages}))
    result = CliRunner().invoke(main, ["gates", str(manifest), "--latency", str(tmp_path / "lat.json"),
                                       "--report-dir", str(tmp_path / "r")])
    assert result.exit_code == 1
    verdicts = {s["stage"]: s["verdict"] for s in
                json.loads((tmp_path / "r" / "report.json").read_text())["latency"]["stages"]}
    assert verdicts == {"capture": "pass", "preprocess": "pass", "inference": "over budget", "postprocess": "pass",
                        "dispatch": "pass", "total": "missing", "batch_wait": "info"}
    assert "over budget" in result.output and "missing" in result.output
    stages["inference"]["p95_ms"] = 90
    stages["total"] = {"p50_ms": 100, "p95_ms": 200}
    (tmp_path / "lat.json").write_text(json.dumps({"stages": stages}))
    ok = CliRunner().invoke(main, ["gates", str(manifest), "--latency", str(tmp_path / "lat.json"),
                                   "--report-dir", str(tmp_path / "r")])
    assert ok.exit_code == 0, ok.output
    (tmp_path / "lat.json").write_text(json.dumps({"stages": {"capture": {"p50_ms": 1}}}))
    bad = CliRunner().invoke(main, ["gates", str(manifest), "--latency", str(tmp_path / "lat.json")])
    assert bad.exit_code == 2 and "p95_ms must be a number" in bad.output


def test_confusion_counts_add_up_on_random_data(manifest: Path, tmp_path: Path):
    """Every confident prediction lands in exactly one column, every non-crowd GT in exactly one row."""
    rng = np.random.default_rng(5)
    gt, preds = synthetic(40, 6, n_classes=3, seed=7)
    gt["categories"] = [{"id": k + 1, "name": n} for k, n in enumerate(["person", "car", "dog"])]
    crowd_free = [a for a in gt["annotations"] if not a["iscrowd"]]
    gt["annotations"] = crowd_free
    preds = [p for p in preds if rng.random() < 0.9]
    run(manifest, tmp_path, gt, preds)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    m = np.array(report["accuracy"]["confusion_matrix"]["counts"])
    assert m[:3].sum() == len(crowd_free)
    assert m[:, :3].sum() == sum(p["score"] >= 0.3 for p in preds)
