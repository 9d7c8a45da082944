"""`edgecv retrain export|trigger`: steps 4 of the retraining loop — hand reviewed samples to training.

`export` turns reviewed corrections (COCO JSON, as `edgecv review export` writes them) and their
images into a self-contained COCO dataset directory, with a provenance file saying where every
image came from. `trigger` tells the user's ML pipeline that a dataset is ready: it runs a
command or POSTs to a webhook / CI dispatch URL. Training itself belongs to that pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import requests

PROVENANCE_KEYS = ("item_id", "reason", "site", "device", "camera", "model", "reviewer", "reviewed_at", "decision")


class RetrainError(ValueError):
    pass


def load_coco_export(path: Path) -> dict:
    """A COCO dataset with images (id, file_name), annotations (image_id, category_id, bbox), categories."""
    try:
        coco = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RetrainError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise RetrainError(f"{path}: '{key}' must be a list")
    for i, img in enumerate(coco["images"]):
        if "id" not in img or "file_name" not in img:
            raise RetrainError(f"{path}: images[{i}] needs 'id' and 'file_name'")
    categories = {c["id"] for c in coco["categories"]}
    for i, ann in enumerate(coco["annotations"]):
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and bbox[2] > 0 and bbox[3] > 0):
            raise RetrainError(f"{path}: annotations[{i}].bbox must be [x, y, w, h] with w, h > 0")
        if ann.get("category_id") not in categories:
            raise RetrainError(f"{path}: annotations[{i}].category_id {ann.get('category_id')} is not a category")
    return coco


def export_dataset(corrections: Path, images_dir: Path, out: Path) -> dict:
    """Write out/images/*, out/annotations.json (COCO) and out/provenance.json. Returns a summary."""
    coco = load_coco_export(corrections)
    known = {img["id"] for img in coco["images"]}
    for ann in coco["annotations"]:
        if ann["image_id"] not in known:
            raise RetrainError(f"{corrections}: annotation {ann.get('id')} refers to unknown image_id {ann['image_id']}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    provenance = []
    for img in coco["images"]:
        src = images_dir / img["file_name"]
        if not src.is_file():
            raise RetrainError(f"{corrections}: image {img['id']} file not found: {src}")
        dst = tmp / "images" / Path(img["file_name"]).name
        shutil.copyfile(src, dst)
        provenance.append({
            "image_id": img["id"], "file": f"images/{dst.name}",
            "sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
            **{k: img[k] for k in PROVENANCE_KEYS if k in img},
        })
        img["file_name"] = dst.name
    (tmp / "annotations.json").write_text(json.dumps(coco, indent=1))
    summary = {
        "created_at": datetime.now(UTC).isoformat(),
        "source": str(corrections),
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
        "classes": [c["name"] for c in coco["categories"]],
        "samples": provenance,
    }
    (tmp / "provenance.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # a half-written dataset is never visible under its final name
    return summary


def trigger(dataset: Path, command: str | None, webhook: str | None, token_env: str = "EDGECV_RETRAIN_TOKEN",
            timeout: float = 30.0) -> str:
    """Run the hook; returns a one-line description of what was triggered."""
    if bool(command) == bool(webhook):
        raise RetrainError("give exactly one of --command or --webhook")
    summary = json.loads((dataset / "provenance.json").read_text())
    if command:
        env = {**os.environ, "EDGECV_DATASET": str(dataset.resolve())}
        done = subprocess.run(shlex.split(command) + [str(dataset.resolve())], env=env, timeout=timeout * 20)
        if done.returncode != 0:
            raise RetrainError(f"retrain command exited with {done.returncode}")
        return f"ran {command!r} on {dataset}"
    headers = {"Content-Type": "application/json"}
    if os.environ.get(token_env):
        headers["Authorization"] = f"Bearer {os.environ[token_env]}"
    body = {"event_type": "edgecv-retrain", "client_payload": {
        "dataset": str(dataset.resolve()), "images": summary["images"], "annotations": summary["annotations"]}}
    try:
        r = requests.post(webhook, json=body, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise RetrainError(f"webhook {webhook} unreachable: {exc}") from exc
    if r.status_code >= 300:
        raise RetrainError(f"webhook {webhook} answered {r.status_code}: {r.text[:200]}")
    return f"POST {webhook} -> {r.status_code}"
