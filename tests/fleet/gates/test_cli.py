"""`edgecv gates`: exit 0 pass / 1 fail / 2 bad input, the report files, the reference histogram, latency."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import pytest
import yaml
from click.testing import CliRunner

from fleet.cli import main
from fleet.spec.manifest import ConfidenceHistogram
from tests.support.manifests import FIXTURES, write_manifest

GT, PRED = FIXTURES / "ground_truth.json", FIXTURES / "predictions.json"
LENIENT = {"default": {"precision": 0.3, "recall": 0.5, "f1": 0.35}}


def gates(*args: str | Path):
    return CliRunner().invoke(main, ["gates", *map(str, args)])


def test_pass_writes_the_reports(tmp_path: Path):
    out = tmp_path / "report"
    r = gates(write_manifest(tmp_path, LENIENT), "--ground-truth", GT, "--predictions", PRED, "--report-dir", out)
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and "person" in r.output

    doc = json.loads((out / "report.json").read_text())
    assert doc["passed"] is True and doc["model"] == "tiny@1.0.0"
    assert doc["inputs"]["predictions"]["sha256"] == hashlib.sha256(PRED.read_bytes()).hexdigest()
    acc = doc["accuracy"]
    car = next(c for c in acc["classes"] if c["name"] == "car")
    assert (car["tp"], car["fp"], car["fn"], car["verdict"]) == (1, 2, 1, "pass")
    assert car["thresholds"] == {"precision": 0.3, "recall": 0.5, "f1": 0.35}
    cm = acc["confusion_matrix"]
    assert cm["labels"][-1] == "background" and cm["counts"][2][3] == 1  # GT car predicted as dog
    assert acc["iou_threshold"] == 0.5 and 0 < acc["map50_95"] <= acc["map50"] <= 1

    md = (out / "report.md").read_text()
    assert "| car | 2 | 1 | 2 | 1 | 0.333 | 0.500 | 0.400 | 0.30 / 0.50 / 0.35 | PASS |" in md
    assert "rows are the ground-truth class" in md and "bicycle" in md  # the no-data class is named
    png = cv2.imread(str(out / "confusion_matrix.png"))
    assert png is not None and png.shape[0] > 100 and png.shape[1] > 100


def test_fail_lists_the_failing_classes(tmp_path: Path):
    out = tmp_path / "report"
    r = gates(write_manifest(tmp_path), "--ground-truth", GT, "--predictions", PRED, "--report-dir", out)
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output and "dog: precision 0.500 < 0.950" in r.output
    doc = json.loads((out / "report.json").read_text())
    assert doc["passed"] is False and doc["accuracy"]["failed_classes"] == ["person", "car", "dog"]
    assert "- car: precision 0.333 < 0.950" in (out / "report.md").read_text()


def test_reference_histogram_for_the_manifest(tmp_path: Path):
    ref = tmp_path / "reference.yaml"
    r = gates(write_manifest(tmp_path), "--ground-truth", GT, "--predictions", PRED,
              "--report-dir", tmp_path / "report", "--reference-out", ref)
    assert r.exit_code == 1, r.output
    hist = ConfidenceHistogram.model_validate(yaml.safe_load(ref.read_text()))
    # Scores >= 0.35 in the fixture: .9 .8 .95 .7 .6 .5 .9 .8 .4 (the .2 is left out) -> bins of 0.05.
    expected = [0] * 20
    for b in (18, 16, 19, 14, 12, 10, 18, 16, 8):
        expected[b] += 1
    assert hist.counts == expected and len(hist.edges) == 21


def bad(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


def gt_doc(**over) -> dict:
    doc = json.loads(GT.read_text())
    doc.update(over)
    return doc


@pytest.mark.parametrize("case", ["malformed", "unknown image", "unknown category", "class not in manifest",
                                  "missing file", "bad manifest", "predictions without ground truth", "no mode"])
def test_bad_input_exits_2_with_one_clear_message(tmp_path: Path, case: str):
    manifest = write_manifest(tmp_path)
    gt, pred = GT, PRED
    if case == "malformed":
        pred = bad(tmp_path, "pred.json", '[\n  {"image_id": 10,, "category_id": 1}\n]')
        expect = f"{pred}:2:19: malformed JSON in predictions"  # the second comma
    elif case == "unknown image":
        pred = bad(tmp_path, "pred.json", json.dumps([{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1],
                                                       "score": 0.5}]))
        expect = f"{pred}: [0].image_id: unknown image_id 99"
    elif case == "unknown category":
        pred = bad(tmp_path, "pred.json", json.dumps([{"image_id": 10, "category_id": 2, "bbox": [0, 0, 1, 1],
                                                       "score": 0.5}]))
        expect = f"{pred}: [0].category_id: unknown category_id 2"
    elif case == "class not in manifest":
        gt = bad(tmp_path, "gt.json", json.dumps(gt_doc(categories=[{"id": 1, "name": "person"},
                                                                    {"id": 3, "name": "lorry"},
                                                                    {"id": 18, "name": "dog"}])))
        expect = f"{gt}: categories[1]: category 3 'lorry' is not a class of the model"
    elif case == "missing file":
        gt = tmp_path / "absent.json"
        expect = f"{gt}: ground truth file not found"
    elif case == "bad manifest":
        manifest.write_text(manifest.read_text().replace("version: 1.0.0", "version: one"))
        expect = "version: 'one' is not a semantic version"
    r = (gates(manifest, "--predictions", pred) if case == "predictions without ground truth"
         else gates(manifest) if case == "no mode"
         else gates(manifest, "--ground-truth", gt, "--predictions", pred, "--report-dir", tmp_path / "r"))
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and not (tmp_path / "r").exists()
    if case == "predictions without ground truth":
        expect = "--ground-truth and --predictions go together"
    elif case == "no mode":
        expect = "give --ground-truth with --predictions, --latency, or both"
    assert expect in r.stderr, r.stderr
    if case != "bad manifest":
        assert len(r.stderr.strip().splitlines()) == 1


def test_latency_gate_table_and_exit_codes(tmp_path: Path):
    manifest = write_manifest(tmp_path)
    ok = gates(manifest, "--latency", FIXTURES / "latency_ok.json", "--report-dir", tmp_path / "ok")
    assert ok.exit_code == 0, ok.output
    assert "batch_wait" in ok.output and "info" in ok.output and "213.0" in ok.output

    over = gates(manifest, "--latency", FIXTURES / "latency_over.json", "--report-dir", tmp_path / "over")
    assert over.exit_code == 1, over.output
    rows = {line.split()[1]: line for line in over.output.splitlines() if line.startswith("│")}
    assert "over budget" in rows["inference"] and "150.0" in rows["inference"]
    assert "missing" in rows["dispatch"] and "pass" in rows["capture"]
    stages = json.loads((tmp_path / "over" / "report.json").read_text())["latency"]["stages"]
    assert {s["stage"]: s["verdict"] for s in stages}["dispatch"] == "missing"
    assert "| inference | 100.0 | 120.0 | 150.0 | over budget |" in (tmp_path / "over" / "report.md").read_text()


def test_both_gates_at_once_must_both_pass(tmp_path: Path):
    manifest = write_manifest(tmp_path, LENIENT)
    args = ["--ground-truth", GT, "--predictions", PRED]
    both_ok = gates(manifest, *args, "--latency", FIXTURES / "latency_ok.json", "--report-dir", tmp_path / "a")
    assert both_ok.exit_code == 0, both_ok.output
    doc = json.loads((tmp_path / "a" / "report.json").read_text())
    assert doc["accuracy"]["passed"] and doc["latency"]["passed"] and set(doc["inputs"]) == {
        "ground_truth", "predictions", "latency"}
    slow = gates(manifest, *args, "--latency", FIXTURES / "latency_over.json", "--report-dir", tmp_path / "b")
    assert slow.exit_code == 1
    doc = json.loads((tmp_path / "b" / "report.json").read_text())
    assert doc["accuracy"]["passed"] and not doc["latency"]["passed"] and not doc["passed"]


def test_no_confident_prediction_fails_and_writes_no_reference(tmp_path: Path):
    low = bad(tmp_path, "pred.json", json.dumps([{"image_id": 10, "category_id": 1, "bbox": [0, 0, 10, 10],
                                                   "score": 0.1}]))
    ref = tmp_path / "reference.yaml"
    r = gates(write_manifest(tmp_path, LENIENT), "--ground-truth", GT, "--predictions", low,
              "--report-dir", tmp_path / "r", "--reference-out", ref)
    assert r.exit_code == 1 and not ref.exists()
    assert "reference.yamlnotwritten" in "".join(r.output.split())  # however rich wrapped the line
