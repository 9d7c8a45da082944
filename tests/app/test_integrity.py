"""app/integrity.py: the model repository is checked against the release build's SHA256SUMS at start;
a changed, missing or added file refuses to serve with a log line per file and a metric."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app.integrity import SUMS, verify, write_sums
from fleet.local.procs import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "app" / "integrity.py"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"weights" * 100)
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\n')
    write_sums(tmp_path)
    return tmp_path


def test_a_repository_as_built_passes_and_every_difference_is_named(repo: Path):
    assert verify(repo) == []
    assert (repo / SUMS).read_text().splitlines()[0].endswith("  m/1/model.onnx")
    (repo / "m" / "1" / "model.onnx").write_bytes(b"tampered")
    (repo / "m" / "config.pbtxt").unlink()
    (repo / "m" / "2").mkdir()
    (repo / "m" / "2" / "model.onnx").write_bytes(b"smuggled")
    problems = verify(repo)
    assert len(problems) == 3
    assert any("m/1/model.onnx: sha256 " in p and "expected" in p for p in problems)
    assert any("m/config.pbtxt: missing" in p for p in problems)
    assert any("m/2/model.onnx: not in SHA256SUMS" in p for p in problems)
    (repo / SUMS).unlink()
    assert "missing" in verify(repo)[0]


def test_a_match_execs_the_server(repo: Path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--repo", str(repo), "--", sys.executable, "-c",
                          "print('serving')"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "serving"
    assert "matches SHA256SUMS (2 files)" in out.stderr


def test_a_tampered_model_refuses_to_serve_with_a_log_line_and_a_metric(repo: Path):
    (repo / "m" / "1" / "model.onnx").write_bytes(b"tampered")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--repo", str(repo), "--metrics-port", str(port), "--",
                             sys.executable, "-c", "print('serving')"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, body = time.monotonic() + 20, None
        while body is None and time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                time.sleep(0.1)
        assert body is not None and "edgecv_model_integrity_ok 0" in body
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)
        assert err.value.code == 503
        assert proc.poll() is None  # it stays up, refusing, instead of crash-looping
    finally:
        proc.kill()
        out, errs = proc.communicate(timeout=10)
    assert "serving" not in out
    assert f"refusing to serve: {repo}/m/1/model.onnx: sha256" in errs
    (repo / "m" / "1" / "model.onnx").write_bytes(b"x")
    assert subprocess.run([sys.executable, str(SCRIPT), "--repo", str(repo)], capture_output=True,
                          timeout=30).returncode == 1  # without a metrics port: exit 1
