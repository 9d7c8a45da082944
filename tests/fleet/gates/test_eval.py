"""`edgecv eval`: the exact artifact through the device's code, judged per class, per site and on support;
a report bound to the artifact's sha256 and the evaluation set's digest; bad input exits 2 writing nothing."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.gates.eval import run_eval
from fleet.gates.evalset import load_eval_set
from fleet.spec.manifest import load_manifest
from tests.support.evalsets import edit_ground_truth, synthetic_repo


def run(manifest: Path, *args: str):
    result = CliRunner().invoke(main, ["eval", str(manifest), "--runtime", "onnxruntime", *args])
    return result.exit_code, result.output


def report(manifest: Path) -> dict:
    return json.loads((manifest.parent / "reports" / "1.0.0" / "report.json").read_text())


def digest_of(manifest: Path) -> str:
    """The evaluation set's digest, computed here independently of fleet.gates.evalset."""
    gt_path = manifest.parent / "eval" / "ground_truth.json"
    gt = json.loads(gt_path.read_text())
    h = hashlib.sha256(hashlib.sha256(gt_path.read_bytes()).digest())
    for im in sorted(gt["images"], key=lambda i: i["id"]):
        raw = (manifest.parent / "eval" / "images" / im["file_name"]).read_bytes()
        h.update(f"\n{im['file_name']}\0".encode())
        h.update(hashlib.sha256(raw).digest())
    return h.hexdigest()


def test_the_report_is_bound_to_the_artifact_and_the_evaluation_set(tmp_path: Path):
    manifest = synthetic_repo(tmp_path, min_support=10)
    code, out = run(manifest)
    assert code == 0, out
    doc = report(manifest)
    m = load_manifest(manifest)
    assert doc["kind"] == "gate-report" and doc["model"] == "synthetic-shapes@1.0.0" and doc["passed"] is True
    assert doc["artifact"]["sha256"] == m.artifact.sha256 == hashlib.sha256(
        (manifest.parent / "synthetic-shapes-1.0.0.onnx").read_bytes()).hexdigest()
    assert doc["eval_set"]["digest"] == digest_of(manifest) and doc["eval_set"]["images"] == 24
    assert doc["eval_set"]["sites"] == ["north", "south"] and [s["site"] for s in doc["sites"]] == ["north", "south"]
    assert doc["tool"]["name"] == "edgecv eval" and doc["tool"]["version"]
    assert datetime.fromisoformat(doc["time"]).tzinfo is not None
    assert doc["load_time"]["runtime"] == "onnxruntime" and doc["load_time"]["verdict"].startswith("info")
    for name, s in doc["support"]["classes"].items():
        low, high = s["recall_ci95"]
        assert 0 <= low <= high <= 1 and s["support"] >= 10, name
    preds = json.loads((manifest.parent / "reports/1.0.0/predictions.json").read_text())
    assert preds and {p["class"] for p in preds} <= {"circle", "square", "triangle"}
    # Another image's bytes: another digest.
    img = manifest.parent / "eval/images/000003.png"
    img.write_bytes(img.read_bytes().replace(b"IEND", b"IEND", 1) + b"\0")
    assert run(manifest)[0] == 0 and report(manifest)["eval_set"]["digest"] == digest_of(manifest) != doc[
        "eval_set"]["digest"]


def test_too_few_examples_fail_closed(tmp_path: Path):
    manifest = synthetic_repo(tmp_path)  # gates.min_support defaults to 1000; ~20 boxes per class here
    code, out = run(manifest)
    assert code == 1, out
    doc = report(manifest)
    assert doc["passed"] is False and doc["support"]["min_support"] == 1000
    assert sorted(doc["accuracy"]["failed_classes"]) == ["circle", "square", "triangle"]
    assert "too few examples" in (manifest.parent / "reports/1.0.0/report.md").read_text()


def test_a_class_that_passes_overall_but_fails_at_one_site_fails_the_gate_naming_the_site(tmp_path: Path):
    gate = {"precision": 0.6, "recall": 0.6, "f1": 0.6}
    manifest = synthetic_repo(tmp_path, n=32, sites=("north", "north", "north", "south"), min_support=5,
                              default=gate)

    def hide_south_circles(gt: dict) -> None:  # the labels at south put circles where the model sees none
        south = {im["id"] for im in gt["images"] if im["site"] == "south"}
        for a in gt["annotations"]:
            if a["image_id"] in south and a["category_id"] == 1:
                a["bbox"] = [0.0, 0.0, 2.0, 2.0]

    edit_ground_truth(manifest, hide_south_circles)
    code, out = run(manifest)
    assert code == 1, out
    doc = report(manifest)
    assert doc["accuracy"]["failed_classes"] == ["circle"]
    circle = next(c for c in doc["accuracy"]["classes"] if c["name"] == "circle")
    assert circle["recall"] >= 0.6 and circle["precision"] >= 0.6  # it passes overall...
    assert any("at site south" in f for f in circle["failures"])  # ...and fails at south
    south = next(s for s in doc["sites"] if s["site"] == "south")
    assert south["failed_classes"] == ["circle"] and not next(s for s in doc["sites"] if s["site"] == "north")[
        "failed_classes"]


def _tamper_artifact(manifest: Path) -> str:
    onnx = manifest.parent / "synthetic-shapes-1.0.0.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    return "artifact.sha256"


def _missing_image(manifest: Path) -> str:
    (manifest.parent / "eval/images/000005.png").unlink()
    return "images[4].file_name 000005.png"


def _unknown_class(manifest: Path) -> str:
    edit_ground_truth(manifest, lambda gt: gt["categories"].append({"id": 9, "name": "hexagon"}))
    return "categories[3]: category 9 'hexagon' is not a class of the model"


def _no_site(manifest: Path) -> str:
    edit_ground_truth(manifest, lambda gt: gt["images"][2].update(site=""))
    return "images[2].site"


@pytest.mark.parametrize("breaks", [_tamper_artifact, _missing_image, _unknown_class, _no_site])
def test_bad_input_exits_2_naming_file_and_field_and_writes_nothing(tmp_path: Path, breaks):
    manifest = synthetic_repo(tmp_path, min_support=10)
    out_dir = manifest.parent / "reports/1.0.0"
    out_dir.mkdir(parents=True)
    (out_dir / "report.json").write_text('{"previous": true}')
    expected = breaks(manifest)
    code, out = run(manifest)
    assert code == 2, out
    assert expected in out
    assert str(manifest.parent) in out  # the file is named
    assert (out_dir / "report.json").read_text() == '{"previous": true}' and sorted(p.name for p in out_dir.iterdir()) \
        == ["report.json"]
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".")]  # no half-written folder


@pytest.mark.slow
@pytest.mark.integration
def test_triton_and_onnxruntime_give_identical_predictions(tmp_path: Path):
    """The CPU CI path (onnxruntime in-process) judges exactly what Triton serving the rendered repository
    would: same boxes, scores and classes for every image; Triton's load time is measured against 30 s."""
    manifest_path = synthetic_repo(tmp_path, n=16, min_support=5)
    m = load_manifest(manifest_path)
    out = {}
    for runtime in ("onnxruntime", "triton"):
        evalset = load_eval_set(manifest_path.parent / "eval/ground_truth.json", m.classes)
        outcome = run_eval(m, manifest_path, evalset, tmp_path / runtime, tmp_path, runtime)
        out[runtime] = (outcome.doc, json.loads((tmp_path / runtime / "predictions.json").read_text()))
    assert out["triton"][1] == out["onnxruntime"][1] and len(out["triton"][1]) > 16
    load = out["triton"][0]["load_time"]
    assert load["runtime"] == "triton" and 0 < load["seconds"] < 30 and load["verdict"] == "pass"
