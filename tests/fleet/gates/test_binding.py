"""Gate binding: a model ships only with a passing `edgecv eval` report for its sha256, or a dated waiver."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fleet.cli import main
from fleet.gates.binding import binding_problems, gate_status, render
from fleet.spec.manifest import load_manifest
from tests.support.evalsets import edit_manifest, synthetic_repo

REPORT = "models/synthetic-shapes/reports/1.0.0/report.json"
TODAY = date(2026, 6, 1)


@pytest.fixture(scope="module")
def gated(tmp_path_factory) -> Path:
    """A registry whose synthetic-shapes manifest has a passing report from `edgecv eval`."""
    root = tmp_path_factory.mktemp("gated")
    manifest = synthetic_repo(root, min_support=10)
    result = CliRunner().invoke(main, ["eval", str(manifest), "--runtime", "onnxruntime"])
    assert result.exit_code == 0, result.output
    edit_manifest(manifest, lambda d: d.update(gate_report=REPORT))
    return root


@pytest.fixture
def repo(gated: Path, tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(gated, root)
    (root / "fleets").mkdir()
    (root / "fleets/shapes.yaml").write_text(yaml.safe_dump({
        "kind": "fleet", "fleet": "acme/shapes", "release": {"app": "1.0.0", "models": [
            "models/synthetic-shapes/manifest.yaml"]}, "rollout": {"canary": {"tag": {"key": "canary"}}}}))
    return root


def status(root: Path, today: date = TODAY):
    path = root / "models/synthetic-shapes/manifest.yaml"
    return gate_status(load_manifest(path), path, root, today)


def validate(root: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["validate", "--root", str(root), str(root / "fleets/shapes.yaml"),
                                       str(root / "models/synthetic-shapes/manifest.yaml")])
    return result.exit_code, result.output


def test_a_passing_report_for_the_manifests_sha256_gates_the_model(repo: Path):
    s = status(repo)
    assert s.state == "passed", s
    assert validate(repo) == (0, "ok: 2 file(s) valid\n")


def test_a_report_for_another_artifact_is_refused(repo: Path):
    onnx = repo / "models/synthetic-shapes/synthetic-shapes-1.0.0.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"retrained")  # a new artifact, manifest updated, report not re-run
    import hashlib

    edit_manifest(repo / "models/synthetic-shapes/manifest.yaml", lambda d: d["artifact"].update(
        sha256=hashlib.sha256(onnx.read_bytes()).hexdigest(), size=onnx.stat().st_size))
    s = status(repo)
    assert s.state == "refused" and s.field == "gate_report" and "judged artifact sha256" in s.reason
    code, out = validate(repo)
    assert code == 1
    assert "models/synthetic-shapes/manifest.yaml:" in out and ": gate_report: " in out and "judged artifact" in out


def test_a_failing_report_a_missing_one_and_one_not_from_edgecv_eval_are_refused(repo: Path):
    path = repo / REPORT
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "passed": False, "accuracy": {**doc["accuracy"], "failed_classes": ["square"]}}))
    assert "says FAIL (square)" in status(repo).reason
    path.write_text(json.dumps({"model": doc["model"], "passed": True}))  # what `edgecv gates` writes: unbound
    assert "not written by `edgecv eval`" in status(repo).reason
    path.unlink()
    assert status(repo).state == "refused" and "not found" in status(repo).reason
    edit_manifest(repo / "models/synthetic-shapes/manifest.yaml", lambda d: d.pop("gate_report"))
    code, out = validate(repo)
    assert code == 1 and "gate_report: missing: no gate report for this version" in out and "released by" in out


def test_a_waiver_stands_in_until_its_date_and_is_shown_in_bold(repo: Path):
    waiver = {"who": "Ada Lovelace", "why": "no labelled site data yet; canary watched by hand", "until": "2026-06-30"}
    edit_manifest(repo / "models/synthetic-shapes/manifest.yaml",
                  lambda d: (d.pop("gate_report"), d["gates"].update(waiver=waiver)))
    s = status(repo)
    assert s.state == "waived" and s.ok
    assert render([s], markdown=True).splitlines()[2] == (
        "- **synthetic-shapes@1.0.0 ships WITHOUT a passing gate report: waived by Ada Lovelace until 2026-06-30: "
        "no labelled site data yet; canary watched by hand**")
    late = status(repo, date(2026, 7, 1))
    assert late.state == "refused" and late.field == "gates.waiver.until" and "ended on 2026-06-30" in late.reason
    problems = binding_problems([repo / "fleets/shapes.yaml"], repo, date(2026, 7, 1))
    assert [(p.path.name, p.field) for p in problems] == [("manifest.yaml", "gates.waiver.until")]
    text = (repo / "models/synthetic-shapes/manifest.yaml").read_text().splitlines()
    assert text[problems[0].line - 1].strip().startswith("until:")


def test_a_waiver_without_a_reason_is_a_schema_error(repo: Path):
    path = repo / "models/synthetic-shapes/manifest.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["gates"]["waiver"] = {"who": "x", "until": "2026-06-30"}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out = validate(repo)
    assert code == 1 and "gates.waiver.why: Field required" in out
