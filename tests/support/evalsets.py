"""A small registry for `edgecv eval` tests: the real synthetic-shapes model and a few seeded scenes on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import yaml

from fleet.retrain.synthetic.scenes import SceneStyle, make_dataset
from fleet.spec.manifest import ModelManifest, load_manifest
from tests.conftest import REPO_ROOT

MODEL = "models/synthetic-shapes"


def synthetic_repo(root: Path, n: int = 24, sites: tuple[str, ...] = ("north", "south"), seed: int = 7,
                   **gates: object) -> Path:
    """root/models/synthetic-shapes/{manifest.yaml, the onnx, eval/ground_truth.json, eval/images/}; the
    manifest's gates updated with `gates`. Image i is taken at sites[i % len(sites)]. Returns the manifest."""
    d = root / MODEL
    (d / "eval" / "images").mkdir(parents=True, exist_ok=True)
    src = yaml.safe_load((REPO_ROOT / MODEL / "manifest.yaml").read_text())
    src.pop("gate_report", None)
    src["gates"] = {**src.get("gates", {}), **gates}
    (d / "manifest.yaml").write_text(yaml.safe_dump(src, sort_keys=False))
    shutil.copy2(REPO_ROOT / src["artifact"]["uri"].removeprefix("file://"), d / "synthetic-shapes-1.0.0.onnx")
    images, gt = make_dataset(n, seed=seed, style=SceneStyle.base())
    for im, img in zip(gt["images"], images, strict=True):
        im["site"] = sites[im["id"] % len(sites)]
        cv2.imwrite(str(d / "eval" / "images" / im["file_name"]), img)
    (d / "eval" / "ground_truth.json").write_text(json.dumps(gt))
    return d / "manifest.yaml"


def edit_ground_truth(manifest_path: Path, edit) -> Path:
    path = manifest_path.parent / "eval" / "ground_truth.json"
    gt = json.loads(path.read_text())
    edit(gt)
    path.write_text(json.dumps(gt))
    return path


def edit_manifest(manifest_path: Path, edit) -> ModelManifest:
    doc = yaml.safe_load(manifest_path.read_text())
    edit(doc)
    manifest_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_manifest(manifest_path)
