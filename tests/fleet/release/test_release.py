"""`edgecv release tags|build`: the tags the controller matches, and a build context of gated, checked models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from app.integrity import verify
from fleet.cli import main
from fleet.release.build import ReleaseInputError, ReleaseRefused, build, build_wheel
from fleet.rollout.model import Release
from fleet.rollout.planner import Desired, resolve_release
from fleet.spec.fleetspec import load_fleet
from tests.conftest import REPO_ROOT

FLEET = REPO_ROOT / "fleets/example-fleet.yaml"


def test_release_tags_are_what_the_controller_matches():
    out = CliRunner().invoke(main, ["release", "tags", "--format", "json", str(FLEET)])
    assert out.exit_code == 0, out.output
    tags = json.loads(out.output)
    assert tags == {"edgecv.app": "1.4.0", "edgecv.model": "nanodet-m@1.0.0"}
    spec, manifests = load_fleet(FLEET)
    desired = Desired.from_spec(spec, manifests)
    built = Release(7, "c0ffee" * 6 + "abcd", "success", "2026-11-30", tags=tags)
    other = Release(8, "beef" * 10, "success", "2026-11-30", tags={**tags, "edgecv.app": "1.3.0"})

    class Observed:  # only what resolve_release reads
        slug, releases = spec.fleet, [other, built]

    assert resolve_release(desired, Observed) is built
    balena = CliRunner().invoke(main, ["release", "tags", "--format", "balena", str(FLEET)])
    assert balena.output.strip() == "edgecv.app 1.4.0 edgecv.model nanodet-m@1.0.0"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_build_assembles_a_checked_context(tmp_path: Path, wheel: Path):
    out = CliRunner().invoke(main, ["release", "build", str(FLEET), "--out", str(tmp_path / "ctx"),
                                    "--wheel", str(wheel)])
    assert out.exit_code == 0, out.output
    ctx = tmp_path / "ctx"
    for rel in ("docker-compose.yml", "balena.yml", "triton/Dockerfile.template", "triton/integrity.py",
                "triton/model-repository/nanodet-m/config.pbtxt", "triton/model-repository/nanodet-m/1/model.onnx",
                "app/Dockerfile.template", f"app/wheels/{wheel.name}", "app/constraints.txt",
                "app/registry/models/nanodet-m/manifest.yaml", "app/registry/models/nanodet-m/nanodet-m.onnx",
                "metrics/Dockerfile.template"):
        assert (ctx / rel).is_file(), rel
    assert verify(ctx / "triton/model-repository") == []
    doc = json.loads((ctx / "release.json").read_text())
    assert doc["tags"] == {"edgecv.app": "1.4.0", "edgecv.model": "nanodet-m@1.0.0"}
    assert doc["models"][0]["sha256"] == "7f532da719615c9ffa513dfde03ef56cb7f683013c525cfde7a2a68fa3a54a5b"
    assert "WITHOUT a passing gate report" in doc["models"][0]["gates"]  # NanoDet-m's waiver travels along
    assert doc["bytes"] == sum((ctx / rel).stat().st_size for rel in doc["files"])


def _repo(tmp_path: Path, edit_manifest=None) -> Path:
    """A copy of the registry parts a release build reads, with the nanodet manifest edited."""
    root = tmp_path / "repo"
    for rel in ("balena", "models/nanodet-m", "fleets"):
        shutil.copytree(REPO_ROOT / rel, root / rel)
    (root / "app").mkdir()
    shutil.copy2(REPO_ROOT / "app/integrity.py", root / "app/integrity.py")
    shutil.copy2(REPO_ROOT / "constraints.txt", root / "constraints.txt")
    if edit_manifest:
        path = root / "models/nanodet-m/manifest.yaml"
        doc = yaml.safe_load(path.read_text())
        edit_manifest(doc)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


def test_an_ungated_model_does_not_build(tmp_path: Path, wheel: Path):
    root = _repo(tmp_path, lambda d: d["gates"].pop("waiver"))
    with pytest.raises(ReleaseRefused, match="nanodet-m@1.0.0: refused: gate_report: missing"):
        build(root / "fleets/example-fleet.yaml", tmp_path / "ctx", wheel, root=root)
    assert not (tmp_path / "ctx").exists() and not list(tmp_path.glob(".ctx*"))


def test_a_tampered_artifact_does_not_build_and_the_previous_context_stays(tmp_path: Path, wheel: Path):
    root = _repo(tmp_path)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "release.json").write_text("previous")
    onnx = root / "models/nanodet-m/nanodet-m.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    with pytest.raises(ReleaseInputError) as err:
        build(root / "fleets/example-fleet.yaml", tmp_path / "ctx", wheel, root=root)
    assert "manifest.yaml" in str(err.value) and "artifact" in str(err.value)
    assert (tmp_path / "ctx" / "release.json").read_text() == "previous" and not list(tmp_path.glob(".ctx*"))


@pytest.mark.slow
def test_builds_of_one_source_tree_at_once_take_turns(tmp_path):
    """Two builds at once (two xdist workers, or the Ansible suite's wheelhouse beside a release build) share
    the tree's build/ directory: without turns one failed with "File exists: build/bdist...dist-info"."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        wheels = list(pool.map(lambda i: build_wheel(tmp_path / f"w{i}"), range(3)))
    assert [w.name for w in wheels] == ["edgecv_fleet-0.1.0-py3-none-any.whl"] * 3
    assert all(w.stat().st_size > 0 for w in wheels)
