"""`edgecv app run` on a malformed config: every problem as FILE:LINE: FIELD: MESSAGE, exit status 2."""

import subprocess
import sys
import textwrap

import pytest

from fleet.repo import REPO_ROOT

pytestmark = pytest.mark.integration


def run_app(config) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli", "app", "run", "--config", str(config), "--duration", "1"],
        capture_output=True, text=True, timeout=60,
    )


def test_malformed_config_exits_2_naming_file_line_and_field(tmp_path):
    config = tmp_path / "site.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            site_id: site-a
            device_id: jetson-01
            manifest: {REPO_ROOT / "models" / "nanodet-m" / "manifest.yaml"}
            triton: {{url: "127.0.0.1:8001", protocoll: grpc}}
            cameras:
              - id: gate
                url: rtsp://10.0.0.9/stream
                fps: -5
                rules:
                  - {{name: r1, kind: zone_intrusion, zone: nowhere}}
            """
        )
    )
    result = run_app(config)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert f"{config}:4: triton.protocoll: unknown key (not allowed here; is it a typo?)" in lines
    assert any(line.startswith(f"{config}:8: cameras[0].fps: Input should be greater than 0") for line in lines), lines
    assert lines[-1] == f"2 problem(s) in {config}"
    assert result.stdout == ""


def test_unreadable_yaml_and_missing_file(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("site_id: a\ncameras: [\n")
    result = run_app(config)
    assert result.returncode == 2 and f"{config}:" in result.stderr and "invalid YAML" in result.stderr
    result = run_app(tmp_path / "absent.yaml")
    assert result.returncode == 2 and "cannot read file" in result.stderr


def test_no_triton_exits_3_after_the_ready_timeout(tmp_path):
    from fleet.local.procs import free_port
    from fleet.local.rtsp import sample_video

    config = tmp_path / "site.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            site_id: site-a
            device_id: jetson-01
            manifest: {REPO_ROOT / "models" / "nanodet-m" / "manifest.yaml"}
            triton: {{url: "127.0.0.1:{free_port()}", ready_timeout_s: 1}}
            cameras: [{{id: yard, url: "{sample_video()}"}}]
            metrics: {{host: 127.0.0.1, port: 0}}
            """
        )
    )
    result = run_app(config)
    assert result.returncode == 3, result.stderr
    assert "model 'nanodet-m' not ready on grpc://127.0.0.1:" in result.stderr
