"""`edgecv rollout` against the API double: plan (table and PR-comment Markdown), apply, status, commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from tests.fleet.rollout.conftest import World, fleet_repo


@pytest.fixture
def cli(world: World, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BALENA_API_KEY", world.api.key)
    fleet_file = fleet_repo(tmp_path)

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["rollout", "--api-url", world.api.url, *args[:1], *args[1:],
                                           str(fleet_file)] if args else [])
        return result.exit_code, result.output

    return run


def test_plan_is_read_only_and_renders_a_pr_comment(cli, world: World):
    code, out = cli("plan", "--format", "markdown")
    assert code == 0, out
    assert out.startswith("### Rollout plan for fleet `acme/edgecv-orin` (edgecv.app=1.4.0, edgecv.model=nanodet-m@1.0.0)")
    assert "| # | action | detail |" in out and "| 2 | pin | 2 canary device(s) -> abababa |" in out
    assert world.api.count("PATCH") == world.api.count("POST") == 0
    code, out = cli("plan")
    assert code == 0 and re.search(r"^2\s+pin\s+2 canary device\(s\) -> abababa$", out, re.M), out


def test_apply_status_and_human_commands(cli, world: World):
    code, out = cli("apply")
    assert code == 0, out
    assert "pinned 2 canary device(s) to abababa" in out and "wait: canary soaking, 24h00m left" in out
    code, out = cli("status")
    assert code == 0 and "rollout of abababa (attempt 1): running" in out and "canary" in out
    code, out = cli("promote", "--by", "dana")
    assert code == 0 and world.state()["promoted"].split("|")[1] == "dana"
    code, out = cli("abort", "--by", "dana")
    assert code == 0 and world.state()["status"] == "paused"
    code, out = cli("rollback", "--by", "dana")
    assert code == 0 and world.state()["status"] == "rolled_back" and world.pinned_to(world.new) == set()
    code, out = cli("promote", "--by", "dana")
    assert code == 2 and "cannot promote: the rollout is rolled_back" in out


def test_a_refused_plan_exits_non_zero_with_the_reason(cli, world: World):
    world.api.store.tables["release"][world.new["id"]]["status"] = "failed"
    code, out = cli("plan", "--format", "markdown")
    assert code == 2 and "**Refused:** the release tagged edgecv.app=1.4.0" in out and "(failed)" in out
    code, out = cli("apply")
    assert code == 2 and "refused:" in out


def test_an_invalid_fleet_file_is_an_error_naming_the_file(cli, world: World, tmp_path: Path):
    path = tmp_path / "fleets/edgecv-orin.yaml"
    path.write_text(path.read_text().replace("fleet: acme/edgecv-orin", "fleet: acme/edgecv-orin\nflet: typo"))
    code, out = cli("plan")
    assert code == 1 and f"{path}:3: flet: unknown key" in out
