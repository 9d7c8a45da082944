"""Fleet files: `edgecv validate` accepts the example and points at file:line: field for every mistake."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fleet.cli import main
from fleet.repo import REPO_ROOT
from fleet.rollout.planner import Desired
from fleet.spec.durations import parse_duration
from fleet.spec.fleetspec import load_fleet
from fleet.spec.validate import check_file
from tests.fleet.rollout.conftest import fleet_repo


def test_the_example_fleet_is_valid_and_names_the_bundled_model():
    result = CliRunner().invoke(main, ["validate", str(REPO_ROOT / "fleets/example-fleet.yaml")])
    assert result.exit_code == 0, result.output
    spec, manifests = load_fleet(REPO_ROOT / "fleets/example-fleet.yaml")
    desired = Desired.from_spec(spec, manifests)
    assert desired.models == (manifests["models/nanodet-m/manifest.yaml"].ref,)
    assert spec.rollout.pilot.soak == timedelta(hours=48) and [w.percent for w in spec.rollout.waves] == [25, 50, 100]


def _problems(tmp_path: Path, edit) -> list[str]:
    path = fleet_repo(tmp_path)
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return [str(p) for p in check_file(path)[1]]


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize("edit, field, message", [
    (lambda d: d["rollout"]["canary"].update(sok="24h"), "rollout.canary.sok", "unknown key"),
    (lambda d: d["rollout"].update(waves=[{"percent": 50}, {"percent": 25}, {"percent": 100}]), "rollout",
     "must increase strictly"),
    (lambda d: d["rollout"].update(waves=[{"percent": 50}]), "rollout", "must reach 100 percent"),
    (lambda d: d["rollout"]["canary"].update(soak="24 hours"), "rollout.canary.soak", "is not a duration"),
    (lambda d: d["rollout"]["canary"].update(devices=["a" * 32]), "rollout.canary", "not both"),
    (lambda d: d["rollout"].update(on_failure="retry"), "rollout.on_failure", "'rollback' or 'pause'"),
    (lambda d: d.update(fleet="Acme/Fleet"), "fleet", "should match pattern"),
    (lambda d: d["release"].update(models=["models/nope/manifest.yaml"]), "release.models[0]",
     "manifest not found: models/nope/manifest.yaml"),
    (lambda d: d.update(analysis={"checks": [{"name": "p95", "query": "up", "max": 1}]}), "analysis.checks[0]",
     "must select the devices with $devices"),
    (lambda d: d.update(analysis={"checks": [{"name": "p95", "query": 'up{device=~"$devices"}', "max": "budget.gpu"}]}),
     "analysis.checks[0]", "budget.<stage>"),
])
def test_mistakes_are_reported_with_file_line_and_field(tmp_path: Path, edit, field: str, message: str):
    problems = _problems(tmp_path, edit)
    assert len(problems) == 1, problems
    where, _, rest = problems[0].partition(": ")
    assert where.startswith(str(tmp_path / "fleets/edgecv-orin.yaml") + ":")
    assert rest.startswith(field + ":") and message in rest, problems[0]


def test_the_line_points_at_the_offending_key(tmp_path: Path):
    problems = _problems(tmp_path, lambda d: d["rollout"].update(max_ofline=0.2))
    path = tmp_path / "fleets/edgecv-orin.yaml"
    assert problems == [f"{path}:{_line_of(path, 'max_ofline')}: rollout.max_ofline: unknown key (not allowed here; "
                        "is it a typo?)"]


def test_an_invalid_manifest_is_reported_on_the_fleet_file(tmp_path: Path):
    path = fleet_repo(tmp_path)
    manifest = tmp_path / "models/nanodet-m/manifest.yaml"
    manifest.write_text(manifest.read_text().replace("version: 1.0.0", "version: one"))
    problems = [str(p) for p in check_file(path)[1]]
    assert len(problems) == 1 and "release.models[0]: invalid manifest models/nanodet-m/manifest.yaml" in problems[0]
    assert "not a semantic version" in problems[0]
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1 and "release.models[0]" in result.output


@pytest.mark.parametrize("text, seconds", [("24h", 86400), ("1d12h", 129600), ("90m", 5400), ("30s", 30), (45, 45)])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


def test_bad_durations_are_refused():
    for bad in ("", "h", "24 hours", -1, True, "1y"):
        with pytest.raises(ValueError):
            parse_duration(bad)
