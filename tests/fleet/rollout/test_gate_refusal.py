"""`edgecv rollout plan|apply` refuse a release whose models are not gated; a waiver rolls out, in bold."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from fleet.cli import main
from tests.fleet.rollout.conftest import World, fleet_repo


def invoke(world: World, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["rollout", "--api-url", world.api.url, *args])
    return result.exit_code, result.output


def test_an_ungated_model_is_refused_with_the_reason_in_the_plan_comment(world: World, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BALENA_API_KEY", world.api.key)
    fleet_file = fleet_repo(tmp_path)
    manifest = tmp_path / "models/nanodet-m/manifest.yaml"
    doc = yaml.safe_load(manifest.read_text())
    assert doc["gates"].pop("waiver")  # the bundled NanoDet-m ships under a waiver: take it away
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out = invoke(world, "plan", "--format", "markdown", str(fleet_file))
    assert code == 2
    assert "### `edgecv-orin.yaml`: refused" in out
    assert "nanodet-m@1.0.0: refused: gate_report: missing: no gate report for this version" in out
    code, out = invoke(world, "apply", str(fleet_file))
    assert code == 2 and "models not gated" in out
    assert world.api.count("PATCH") == world.api.count("POST") == 0  # nothing was pinned or tagged
    code, out = invoke(world, "status", str(fleet_file))  # looking (and abort, rollback) never needs a gate
    assert code == 0, out


def test_a_waived_model_rolls_out_and_the_plan_comment_shows_the_waiver_in_bold(world: World, tmp_path: Path,
                                                                                monkeypatch):
    monkeypatch.setenv("BALENA_API_KEY", world.api.key)
    fleet_file = fleet_repo(tmp_path)
    code, out = invoke(world, "plan", "--format", "markdown", str(fleet_file))
    assert code == 0, out
    assert "- **nanodet-m@1.0.0 ships WITHOUT a passing gate report: waived by" in out
