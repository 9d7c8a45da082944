"""`edgecv retrain export|trigger` and `edgecv models bump`, including their refusals."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from fleet.cli import main
from fleet.spec.validate import validate_paths
from tests.support.manifests import manifest_dict


def corrections(tmp_path: Path, n: int = 3) -> tuple[Path, Path]:
    images = tmp_path / "review-images"
    images.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]}
    for i in range(1, n + 1):
        cv2.imwrite(str(images / f"item-{i}.png"), np.full((32, 32, 3), i * 40, np.uint8))
        coco["images"].append({"id": i, "file_name": f"item-{i}.png", "item_id": f"it-{i}", "reason": "drift",
                               "site": "site-a", "camera": "cam-1", "model": "tiny@1.2.3"})
        coco["annotations"].append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [2, 2, 10, 12]})
    path = tmp_path / "corrections.json"
    path.write_text(json.dumps(coco))
    return path, images


def test_export_writes_a_coco_dataset_with_provenance(tmp_path: Path):
    path, images = corrections(tmp_path)
    out = tmp_path / "dataset"
    result = CliRunner().invoke(main, ["retrain", "export", "--corrections", str(path), "--images", str(images),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 3
    assert all((out / "images" / img["file_name"]).is_file() for img in coco["images"])
    prov = json.loads((out / "provenance.json").read_text())
    assert [s["item_id"] for s in prov["samples"]] == ["it-1", "it-2", "it-3"]
    assert prov["samples"][0]["reason"] == "drift" and len(prov["samples"][0]["sha256"]) == 64


@pytest.mark.parametrize("breakage, message", [
    (lambda c: "{not json", "malformed JSON"),
    (lambda c: {**c, "annotations": [{**c["annotations"][0], "image_id": 99}]}, "unknown image_id 99"),
    (lambda c: {**c, "annotations": [{**c["annotations"][0], "bbox": [1, 1, 0, 5]}]}, "bbox must be"),
    (lambda c: {**c, "annotations": [{**c["annotations"][0], "category_id": 7}]}, "is not a category"),
    (lambda c: {**c, "images": [{**c["images"][0], "file_name": "gone.png"}, *c["images"][1:]]}, "file not found"),
])
def test_export_refuses_bad_input_and_writes_nothing(tmp_path: Path, breakage, message):
    path, images = corrections(tmp_path)
    broken = breakage(json.loads(path.read_text()))
    path.write_text(broken if isinstance(broken, str) else json.dumps(broken))
    out = tmp_path / "dataset"
    result = CliRunner().invoke(main, ["retrain", "export", "--corrections", str(path), "--images", str(images),
                                       "--out", str(out)])
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()


def test_trigger_runs_a_command_and_posts_a_webhook(tmp_path: Path):
    path, images = corrections(tmp_path)
    out = tmp_path / "dataset"
    CliRunner().invoke(main, ["retrain", "export", "--corrections", str(path), "--images", str(images), "--out", str(out)])
    marker = tmp_path / "ran"
    cmd = f"sh -c 'echo \"$0\" > {marker}'"
    result = CliRunner().invoke(main, ["retrain", "trigger", str(out), "--command", cmd])
    assert result.exit_code == 0, result.output
    assert marker.read_text().strip() == str(out.resolve())

    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204 if len(received) == 1 else 500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/dispatches"
    try:
        ok = CliRunner().invoke(main, ["retrain", "trigger", str(out), "--webhook", url])
        assert ok.exit_code == 0, ok.output
        assert received[0]["client_payload"]["images"] == 3
        failing = CliRunner().invoke(main, ["retrain", "trigger", str(out), "--webhook", url])
        assert failing.exit_code == 1 and "answered 500" in failing.output
    finally:
        server.shutdown()
    both = CliRunner().invoke(main, ["retrain", "trigger", str(out), "--webhook", url, "--command", "true"])
    assert both.exit_code == 1 and "exactly one" in both.output


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    art = b"model v1 bytes"
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "tiny.onnx").write_bytes(art)
    text = "# tiny: a test model\n" + yaml.safe_dump(manifest_dict("file://models/tiny/tiny.onnx", art), sort_keys=False)
    (tmp_path / "models" / "tiny" / "manifest.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)  # validate with no paths checks the registry in the current directory
    return tmp_path


def gate_report(tmp_path: Path, passed: bool) -> Path:
    d = tmp_path / f"report-{passed}"
    d.mkdir()
    (d / "report.json").write_text(json.dumps({"passed": passed}))
    (d / "report.md").write_text("| class | verdict |\n")
    return d


def test_bump_writes_a_valid_next_version(repo: Path, tmp_path: Path):
    manifest = repo / "models" / "tiny" / "manifest.yaml"
    new = tmp_path / "v2.onnx"
    new.write_bytes(b"model v2 bytes, retrained")
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump({"edges": [0.0, 0.5, 1.0], "counts": [3, 9]}))
    result = CliRunner().invoke(main, ["models", "bump", str(manifest), "--artifact", str(new),
                                       "--gate-report", str(gate_report(tmp_path, True)), "--reference", str(ref)])
    assert result.exit_code == 0, result.output
    text = manifest.read_text()
    assert text.startswith("# tiny: a test model")  # comments survive the rewrite
    doc = yaml.safe_load(text)
    assert doc["version"] == "1.3.0"
    assert doc["artifact"]["uri"] == "file://models/tiny/tiny-1.3.0.onnx"
    assert doc["reference_confidence"] == {"edges": [0.0, 0.5, 1.0], "counts": [3, 9]}
    assert (repo / "models" / "tiny" / "reports" / "1.3.0" / "report.json").is_file()
    files, problems = validate_paths([])
    assert problems == [] and files == [manifest]


def test_bump_refuses_a_failing_or_missing_gate_report(repo: Path, tmp_path: Path):
    manifest = repo / "models" / "tiny" / "manifest.yaml"
    before = manifest.read_text()
    new = tmp_path / "v2.onnx"
    new.write_bytes(b"v2")
    failing = CliRunner().invoke(main, ["models", "bump", str(manifest), "--artifact", str(new),
                                        "--gate-report", str(gate_report(tmp_path, False))])
    assert failing.exit_code == 1 and "gates failed" in failing.output
    empty = tmp_path / "empty-report"
    empty.mkdir()
    missing = CliRunner().invoke(main, ["models", "bump", str(manifest), "--artifact", str(new),
                                        "--gate-report", str(empty)])
    assert missing.exit_code == 1 and "unreadable" in missing.output
    assert manifest.read_text() == before
    assert not (repo / "models" / "tiny" / "tiny-1.3.0.onnx").exists()
