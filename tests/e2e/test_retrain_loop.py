"""The retraining loop end to end, offline, on the synthetic-scene detector.

v1 passes its gates on base scenes -> the scenes shift (darker, another floor) -> the drift
monitors alarm and a drift event goes out on MQTT -> doubtful frames are sampled for review ->
"reviewers" label them (the generator's exact ground truth stands in) -> `edgecv retrain export`
-> v2 is fine-tuned from v1 on the reviewed samples -> v2 passes the gates on the shifted
held-out set where v1 fails -> `edgecv models bump` writes a manifest `edgecv validate` accepts.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from click.testing import CliRunner

from app.alerts.publisher import AlertPublisher
from app.drift.monitors import DriftConfig, DriftMonitor
from app.drift.sampling import ReviewSampler, SamplingConfig
from fleet.cli import main
from fleet.local.mosquitto import mosquitto
from fleet.retrain.synthetic.scenes import CLASSES, SceneStyle, make_dataset, make_scene
from fleet.spec.manifest import load_manifest
from fleet.spec.validate import validate_paths

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "synthetic-shapes"
HELD_OUT = 300


def run_gates(manifest: Path, onnx: Path, style: SceneStyle, out: Path) -> tuple[int, Path]:
    from fleet.retrain.synthetic.train import predict

    images, gt = make_dataset(HELD_OUT, seed=999, style=style)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gt.json").write_text(json.dumps(gt))
    (out / "pred.json").write_text(json.dumps(predict(onnx, images)))
    report = out / "report"
    result = CliRunner().invoke(main, [
        "gates", str(manifest), "--ground-truth", str(out / "gt.json"), "--predictions", str(out / "pred.json"),
        "--report-dir", str(report), "--reference-out", str(out / "reference.yaml"),
    ])
    assert result.exit_code in (0, 1), result.output
    print(result.output)  # the gate table, for whoever reads a failing run
    return result.exit_code, report


def detections(onnx: Path, images: list[np.ndarray], threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    from fleet.retrain.synthetic.train import predict

    by_image: dict[int, list[dict]] = {i + 1: [] for i in range(len(images))}
    for p in predict(onnx, images, score_threshold=threshold):
        by_image[p["image_id"]].append(p)
    return [(np.array([p["score"] for p in ps]), np.array([p["category_id"] - 1 for p in ps], np.int64))
            for ps in by_image.values()]


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the model's registry folder in a throwaway repository root."""
    root = tmp_path / "repo"
    shutil.copytree(MODEL_DIR, root / "models" / "synthetic-shapes")
    monkeypatch.chdir(root)  # validate with no paths checks the registry in the current directory
    return root


def test_drift_review_retrain_gates_bump(repo: Path, tmp_path: Path):
    from fleet.retrain.synthetic.train import export_onnx, train

    manifest_path = repo / "models" / "synthetic-shapes" / "manifest.yaml"
    manifest = load_manifest(manifest_path)
    v1 = manifest.artifact.local_path(repo)
    threshold = manifest.decoder.params.score_threshold

    # 1. v1 passes on base scenes.
    code, _ = run_gates(manifest_path, v1, SceneStyle.base(), tmp_path / "v1-base")
    assert code == 0

    # 2. Detect: a healthy stream never alarms; the shifted stream alarms within one window.
    broker = mosquitto()
    received: list[dict] = []
    with broker, AlertPublisher("127.0.0.1", broker.port, "site-a", "dev-1", tmp_path / "spool") as pub:
        got = threading.Event()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        sub.on_message = lambda c, u, m: (received.append(json.loads(m.payload)), got.set())
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("edgecv/site-a/dev-1/drift", qos=1)
        sub.loop_start()

        def on_drift(kind: str, value: float, limit: float) -> None:
            pub.publish("drift", {"kind": kind, "value": value, "threshold": limit, "model": manifest.ref})

        config = DriftConfig(window=600, frame_window=200, min_samples=300)
        monitor = DriftMonitor(manifest.reference_confidence, len(CLASSES), config, on_drift=on_drift)
        rng = np.random.default_rng(5)
        base_frames = [make_scene(rng, 128, SceneStyle.base())[0] for _ in range(400)]
        for scores, classes in detections(v1, base_frames, threshold):
            monitor.observe_frame(scores, classes)
            monitor.check()
        assert not monitor.alarming, monitor.stats()

        # Review sampling looks below the alert threshold too: the edge cases are the faint detections.
        sampler = ReviewSampler(SamplingConfig(low_confidence=(0.1, 0.6), low_confidence_rate=0.02,
                                               drift_rate=1.0, max_per_minute=1e6, burst=1000), seed=1)
        shifted = [make_scene(rng, 128, SceneStyle.shifted()) for _ in range(1000)]
        frames = [s[0] for s in shifted]
        flagged = []
        for (image, boxes, classes), (scores, cls), (faint, _) in zip(
            shifted, detections(v1, frames, threshold), detections(v1, frames, 0.1), strict=True
        ):
            monitor.observe_frame(scores, cls)
            monitor.check()
            if sampler.reason(faint, monitor.alarming):
                flagged.append((image, boxes, classes))
        kinds = {k for k, a in monitor.alarms.items() if a.active}
        assert {"psi", "detection_entropy"} <= kinds, monitor.stats()
        assert got.wait(10), "no drift event reached the broker"
        sub.loop_stop()
    assert {e["kind"] for e in received} >= {"psi"}
    assert len(flagged) >= 300

    # v1 fails on the shifted held-out set.
    code, _ = run_gates(manifest_path, v1, SceneStyle.shifted(), tmp_path / "v1-shifted")
    assert code == 1

    # 3-4. Label the flagged samples (the generator's truth stands in for reviewers) and export them.
    images_dir = tmp_path / "review-images"
    images_dir.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]}
    for i, (image, boxes, classes) in enumerate(flagged, 1):
        cv2.imwrite(str(images_dir / f"{i}.png"), image)
        coco["images"].append({"id": i, "file_name": f"{i}.png", "width": 128, "height": 128, "reason": "drift"})
        for (x1, y1, x2, y2), c in zip(boxes.tolist(), classes.tolist(), strict=True):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": c + 1,
                                        "bbox": [x1, y1, x2 - x1, y2 - y1]})
    (tmp_path / "corrections.json").write_text(json.dumps(coco))
    dataset = tmp_path / "dataset"
    result = CliRunner().invoke(main, ["retrain", "export", "--corrections", str(tmp_path / "corrections.json"),
                                       "--images", str(images_dir), "--out", str(dataset)])
    assert result.exit_code == 0, result.output

    # 5. v2: fine-tuned from v1 on the exported dataset, then gated on the shifted held-out set.
    exported = json.loads((dataset / "annotations.json").read_text())
    imgs, boxes, classes = [], [], []
    for img in exported["images"]:
        anns = [a for a in exported["annotations"] if a["image_id"] == img["id"]]
        imgs.append(cv2.imread(str(dataset / "images" / img["file_name"])))
        boxes.append(np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                               for a in anns], np.float32).reshape(-1, 4))
        classes.append(np.array([a["category_id"] - 1 for a in anns], np.int64))
    net = train(900, 32, seed=1, init=v1.with_suffix(".pt"), extra=(imgs, boxes, classes), extra_share=0.6,
                lr=2e-3, log_every=50)
    v2 = export_onnx(net, tmp_path / "v2.onnx")
    code, report = run_gates(manifest_path, v2, SceneStyle.shifted(), tmp_path / "v2-shifted")
    assert code == 0

    # 6. The new manifest version, ready for a pull request.
    result = CliRunner().invoke(main, ["models", "bump", str(manifest_path), "--artifact", str(v2), "--gate-report",
                                       str(report), "--reference", str(tmp_path / "v2-shifted" / "reference.yaml")])
    assert result.exit_code == 0, result.output
    bumped = yaml.safe_load(manifest_path.read_text())
    assert bumped["version"] == "1.1.0"
    files, problems = validate_paths([repo / "models"], root=repo)
    assert problems == [] and files == [manifest_path]
