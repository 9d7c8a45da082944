"""`edgecv telemetry report`: PNGs from Prometheus range queries, opened back and looked at."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib import image

from fleet.local.procs import free_port
from fleet.local.prometheus import wait_for
from fleet.repo import REPO_ROOT
from fleet.telemetry.cli import telemetry
from tests.support.telemetry_fixtures import DEVICE

pytestmark = pytest.mark.integration
MANIFEST = REPO_ROOT / "models" / "synthetic-shapes" / "manifest.yaml"


def report(*args: str):
    return CliRunner().invoke(telemetry, ["report", *args], catch_exceptions=False)


def test_report_writes_three_pngs_with_data(stack, tmp_path):
    # Two scrapes in the rate window are needed before a p95 exists.
    assert wait_for(stack.central_url, "edgecv:stage_latency_seconds:p95")
    result = report("--prometheus", stack.central_url, "--last", "2m", "--rate-window", "5s", "--out", str(tmp_path),
                    "--manifest", str(MANIFEST), "--selector", f'device="{DEVICE}"')
    assert result.exit_code == 0, result.output
    assert "no data" not in result.output
    for name in ("latency.png", "fps.png", "confidence.png"):
        img = image.imread(tmp_path / name)
        assert img.ndim == 3 and img.shape[0] >= 400 and img.shape[1] >= 900, name
        assert np.std(img[..., :3]) > 0.05, f"{name} looks blank"


def test_report_with_no_matching_series_says_so(stack, tmp_path):
    result = report("--prometheus", stack.central_url, "--last", "2m", "--out", str(tmp_path),
                    "--selector", 'device="no-such-device"')
    assert result.exit_code == 1
    assert result.output.count("(no data)") == 3 and "is Prometheus scraping the app?" in result.output
    assert (tmp_path / "latency.png").exists()  # the PNGs still say "no data"


def test_report_names_an_unreachable_prometheus(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = report("--prometheus", url, "--last", "5m", "--out", str(tmp_path))
    assert result.exit_code == 1 and f"Prometheus at {url} unreachable" in result.output


def test_report_shows_promql_errors(stack, tmp_path):
    result = report("--prometheus", stack.central_url, "--last", "5m", "--out", str(tmp_path), "--selector", "device=")
    assert result.exit_code == 1 and "PromQL error for" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--last", "15 minutes"], "is not a duration"),
        (["--last", "5m", "--start", "0"], "either --last or --start/--end"),
        (["--start", "2026-01-02T00:00:00", "--end", "2026-01-01T00:00:00"], "--start must be before --end"),
        (["--start", "yesterday"], "neither unix seconds nor an ISO 8601 time"),
    ],
)
def test_report_refuses_bad_ranges(tmp_path, args, message):
    result = report("--prometheus", "http://127.0.0.1:9", "--out", str(tmp_path), *args)
    assert result.exit_code == 2 and message in result.output


def test_report_refuses_an_invalid_manifest(tmp_path):
    bad = tmp_path / "models" / "synthetic-shapes" / "manifest.yaml"  # where load_manifest expects one
    bad.parent.mkdir(parents=True)
    text = MANIFEST.read_text()
    bad.write_text(text.replace("\nversion: ", "\nversion: not-semver  # was ", 1))
    result = report("--prometheus", "http://127.0.0.1:9", "--last", "5m", "--out", str(tmp_path), "--manifest", str(bad))
    assert result.exit_code == 1 and "invalid manifest" in result.output and "manifest.yaml:" in result.output and "version" in result.output


def test_last_uses_the_fleet_files_duration_grammar(tmp_path):
    """One duration grammar: '1d12h' works for --last as it does in fleet files; nonsense is named."""
    ok = report("--prometheus", "http://127.0.0.1:9", "--last", "1d12h", "--out", str(tmp_path))
    assert "not a duration" not in ok.output and "unreachable" in ok.output
    bad = report("--prometheus", "http://127.0.0.1:9", "--last", "soon", "--out", str(tmp_path))
    assert bad.exit_code == 2 and "--last" in bad.output and "not a duration" in bad.output
