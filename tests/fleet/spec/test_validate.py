"""`edgecv validate`: every error names the file, the line and the field; exit status 1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fleet.cli import main
from fleet.spec.manifest import ModelManifest
from fleet.spec.validate import check_file, validate_paths
from tests.support.manifests import ARTIFACT, manifest_dict


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throwaway repository root with one valid manifest and its artifact."""
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "tiny.onnx").write_bytes(ARTIFACT)
    write(tmp_path, manifest_dict("file://models/tiny/tiny.onnx"))
    monkeypatch.chdir(tmp_path)  # validate with no paths checks the registry in the current directory
    return tmp_path


def write(root: Path, data: dict | str) -> Path:
    path = root / "models" / "tiny" / "manifest.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def run(root: Path, *args: str):
    # validate with no paths checks the registry in the current directory (the fixture's chdir).
    return CliRunner().invoke(main, ["validate", *args])


def test_valid_manifest_passes(repo: Path):
    result = run(repo)
    assert result.exit_code == 0, result.output
    assert "1 file(s) valid" in result.output


def test_defaults_come_from_the_blueprint(repo: Path):
    manifest, problems = check_file(repo / "models" / "tiny" / "manifest.yaml")
    assert problems == []
    assert isinstance(manifest, ModelManifest)
    assert manifest.latency_budget_ms.as_dict() == {
        "capture": 33.0, "preprocess": 10.0, "inference": 100.0,
        "postprocess": 20.0, "dispatch": 50.0, "total": 213.0,
    }
    gate = manifest.gates.for_class("person")
    assert (gate.precision, gate.recall, gate.f1) == (0.95, 0.90, 0.92)


def test_bad_yaml_names_file_and_line(repo: Path):
    path = write(repo, "name: tiny\nversion: [1.0\n")
    result = run(repo)
    assert result.exit_code == 1
    assert f"{path}:" in result.output and "invalid YAML" in result.output


def test_unknown_key_is_an_error_with_its_line(repo: Path):
    data = manifest_dict("file://models/tiny/tiny.onnx")
    data["input"]["chanel_order"] = "RGB"  # the typo must not pass silently
    path = write(repo, data)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "chanel_order" in text)
    result = run(repo)
    assert result.exit_code == 1
    assert f"{path}:{line}: input.chanel_order: unknown key" in result.output


def test_wrong_sha256_is_reported(repo: Path):
    data = manifest_dict("file://models/tiny/tiny.onnx")
    data["artifact"]["sha256"] = "0" * 64
    write(repo, data)
    result = run(repo)
    assert result.exit_code == 1
    assert "artifact.sha256: does not match the file" in result.output


def test_missing_artifact_and_wrong_size(repo: Path):
    data = manifest_dict("file://models/tiny/missing.onnx")
    write(repo, data)
    assert "artifact file not found" in run(repo).output
    data = manifest_dict("file://models/tiny/tiny.onnx")
    data["artifact"]["size"] = 7
    write(repo, data)
    assert "artifact.size: is 7" in run(repo).output


def test_bad_semver_and_missing_class_list(repo: Path):
    data = manifest_dict("file://models/tiny/tiny.onnx")
    data["version"] = "1.2"
    del data["classes"]
    write(repo, data)
    result = run(repo)
    assert result.exit_code == 1
    assert "version: '1.2' is not a semantic version" in result.output
    assert "classes: Field required" in result.output
    assert "2 problem(s)" in result.output


def test_gate_override_for_unknown_class(repo: Path):
    data = manifest_dict("file://models/tiny/tiny.onnx")
    data["gates"] = {"classes": {"bicycle": {"precision": 0.5}}}
    write(repo, data)
    assert "not in the class list: ['bicycle']" in run(repo).output


def test_decoder_must_use_declared_outputs(repo: Path):
    data = manifest_dict("file://models/tiny/tiny.onnx")
    data["decoder"]["params"]["scores_output"] = "logits"
    write(repo, data)
    assert "decoder uses outputs not declared in outputs: ['logits']" in run(repo).output


def test_unknown_decoder_name(repo: Path):
    data = manifest_dict("file://models/tiny/tiny.onnx")
    data["decoder"]["name"] = "yolo"
    write(repo, data)
    result = run(repo)
    assert result.exit_code == 1 and "decoder" in result.output


def test_s3_artifact_is_not_fetched(repo: Path):
    write(repo, manifest_dict("s3://edgecv-artifacts/tiny/1.2.3/model.onnx"))
    assert run(repo).exit_code == 0


def test_every_problem_is_listed_once(repo: Path):
    data = manifest_dict("file://models/tiny/tiny.onnx")
    data["version"] = "x"
    data["input"]["shape"] = [1, 64, 64]
    data["triton"] = {"max_batch_size": 4, "dynamic_batching": {"preferred_batch_sizes": [8]}}
    write(repo, data)
    files, problems = validate_paths([])
    fields = sorted(p.field for p in problems)
    assert fields == ["input", "triton", "version"], problems


def test_explicit_path_outside_models_is_refused(tmp_path: Path):
    other = tmp_path / "random.yaml"
    other.write_text("a: 1\n")
    result = CliRunner().invoke(main, ["validate", str(other)])
    assert result.exit_code == 1
    assert "random.yaml:1: kind: missing" in result.output


def test_the_schema_comes_from_kind_not_from_the_path(tmp_path: Path):
    """A manifest anywhere is checked as a manifest by its kind: field; --kind stands in for a missing one."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "tiny.onnx").write_bytes(ARTIFACT)
    doc = manifest_dict("file://tiny.onnx")
    path = tmp_path / "elsewhere" / "any-name.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    ok = CliRunner().invoke(main, ["validate", "--root", str(tmp_path / "elsewhere"), str(path)])
    assert ok.exit_code == 0, ok.output
    del doc["kind"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert CliRunner().invoke(main, ["validate", "--root", str(tmp_path / "elsewhere"), str(path)]).exit_code == 1
    explicit = CliRunner().invoke(main, ["validate", "--kind", "model-manifest", "--root", str(tmp_path / "elsewhere"),
                                         str(path)])
    assert explicit.exit_code == 0, explicit.output
    doc["kind"] = "fleet"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    wrong = CliRunner().invoke(main, ["validate", str(path)])
    assert wrong.exit_code == 1 and "unknown key" in wrong.output


def test_repository_models_are_valid(repo_root: Path):
    """The manifests committed under models/ (and fleets/) pass."""
    if not any((repo_root / "models").glob("*/manifest.yaml")):
        pytest.skip("no manifests committed yet")
    files, problems = validate_paths([repo_root / "models", repo_root / "fleets"], root=repo_root)
    assert problems == []


def test_copy_of_real_manifest_with_bad_field(repo_root: Path, tmp_path: Path, monkeypatch):
    real = repo_root / "models" / "nanodet-m" / "manifest.yaml"
    if not real.exists():
        pytest.skip("nanodet manifest not committed yet")
    (tmp_path / "models" / "nanodet-m").mkdir(parents=True)
    text = real.read_text().replace("task: detection", "task: segmentation")
    dst = tmp_path / "models" / "nanodet-m" / "manifest.yaml"
    dst.write_text(text)
    shutil.copy(real.parent / "nanodet-m.onnx", dst.parent / "nanodet-m.onnx")
    monkeypatch.chdir(tmp_path)  # validate with no paths checks the registry in the current directory
    _, problems = check_file(dst)
    assert [p.field for p in problems] == ["task"]
