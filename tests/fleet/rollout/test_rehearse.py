"""`edgecv rollout rehearse`: the example fleet file's real policy on a simulated fleet, device metrics in a
real Prometheus (remote-write at simulated time), the real controller and SDK against the API double."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fleet.cli import main
from fleet.repo import REPO_ROOT
from fleet.rollout.rehearse import demo_rehearsal, rehearse

EXAMPLE = REPO_ROOT / "fleets/example-fleet.yaml"


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_regression_on_the_pilot_is_caught_by_the_real_analysis_and_rolled_back():
    lines: list[str] = []
    outcome = demo_rehearsal(out=lines.append)
    assert outcome.status == "rolled_back", "\n".join(lines)
    text = "\n".join(outcome.timeline)
    assert "analysis of canary: PASS" in text and "analysis of pilot: FAIL" in text and "fps fail" in text
    assert "rolled back" in text and lines == outcome.timeline
    assert outcome.timeline[-1].endswith("x60")  # every device back on the release the fleet ran
    assert outcome.simulated.total_seconds() > 72 * 3600 and outcome.samples > 0


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_person_in_the_dashboard_halts_the_rehearsal_until_on_call_resumes_and_it_completes():
    outcome = rehearse(EXAMPLE, devices=40, human_pins=["pilot"], out=lambda line: None)
    text = "\n".join(outcome.timeline)
    assert outcome.status == "done", text
    assert "halted" in text and "resume" in text and "left to the person" in text
    for stage in ("canary", "pilot", "wave1", "wave2", "wave3"):
        assert f"analysis of {stage}: PASS" in text


def test_simulated_devices_report_the_apps_own_histogram_buckets():
    from app.metrics import LATENCY_BUCKETS
    from fleet.rollout import rehearse as module

    assert module.LATENCY_BUCKETS == LATENCY_BUCKETS


@pytest.mark.parametrize("args, complaint", [
    (["--regression", "pilot:fps"], "STAGE:METRIC=VALUE"),
    (["--regression", "wave9:fps=2"], "wave9"),
    (["--human-pin", "nowhere"], "--human-pin"),
    (["--offline", "1.5"], "--offline"),
])
def test_bad_rehearsal_options_are_refused_naming_the_option(args: list[str], complaint: str):
    result = CliRunner().invoke(main, ["rollout", "rehearse", str(EXAMPLE), *args])
    assert result.exit_code == 2 and complaint in result.output, result.output
