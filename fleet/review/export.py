"""Reviewed items as a COCO dataset for `edgecv retrain export`.

Writes OUT/images/<item>.jpg and OUT/corrections.json (written last, atomically); use them as
`edgecv retrain export --corrections OUT/corrections.json --images OUT/images`. Approved items
carry the model's boxes (verified), corrected ones the reviewer's, rejected ones none (a hard
negative). Each image entry carries its provenance (item, reason, site, device, camera, model,
reviewer, decision time, decision), which `edgecv retrain export` copies into provenance.json.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import requests
from sqlalchemy import select

from fleet.review.db import Database, get_setting
from fleet.review.fetch import FetchRefused, fetch_image
from fleet.review.models import DECISIONS, Item
from fleet.review.queue import DONE, usernames
from fleet.review.settings import ReviewSettings


class ExportError(RuntimeError):
    pass


def palette(db: Database, settings: ReviewSettings) -> list[str]:
    """The class palette: as the server last saved it (edgecv review serve --classes), else the settings'."""
    with db.read() as s:
        saved = get_setting(s, "classes")
    return json.loads(saved) if saved else list(settings.classes)


def image_bytes(item: Item, settings: ReviewSettings) -> bytes:
    if item.image_file:
        return (settings.data_dir / "images" / item.image_file).read_bytes()
    if item.image_path:
        if settings.evidence_root is None:
            raise FileNotFoundError(f"{item.image_path} (no --evidence-root given)")
        return (settings.evidence_root / item.image_path).read_bytes()
    return fetch_image(item.image_url, settings.image_url_allow, settings.max_image_bytes)


def export_coco(db: Database, settings: ReviewSettings, out: Path, decisions: tuple[str, ...] = DECISIONS,
                since: float | None = None, skip_missing: bool = False) -> dict:
    unknown = set(decisions) - set(DECISIONS)
    if unknown:
        raise ExportError(f"decisions: unknown {sorted(unknown)}; known: {list(DECISIONS)}")
    where = [Item.status == DONE, Item.decision.in_(decisions)]
    if since is not None:
        where.append(Item.reviewed_at >= since)
    with db.read() as s:
        items = s.scalars(select(Item).where(*where).order_by(Item.reviewed_at, Item.id)).all()
        names = usernames(s)
    classes = palette(db, settings)
    for item in items:
        for label in item.labels or []:
            if label["class"] not in classes:
                classes.append(label["class"])
    category = {name: i + 1 for i, name in enumerate(classes)}

    staging = out / ".export-tmp"  # nothing under out/ changes unless the export succeeds
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    coco: dict = {"info": {"description": "edgecv review export", "created": datetime.now(UTC).isoformat()},
                  "images": [], "annotations": [],
                  "categories": [{"id": i, "name": n} for n, i in category.items()]}
    missing = []
    for item in items:
        try:
            data = image_bytes(item, settings)
        except (OSError, FetchRefused, requests.RequestException) as exc:
            missing.append(f"{item.id}: {exc}")
            continue
        file_name = f"{item.id}.jpg"
        (staging / "images" / file_name).write_bytes(data)
        image_id = len(coco["images"]) + 1
        coco["images"].append({
            "id": image_id, "file_name": file_name, "width": item.width, "height": item.height,
            "item_id": item.id, "reason": item.reason, "site": item.site, "device": item.device,
            "camera": item.camera, "model": item.model, "event_id": item.event_id,
            "reviewer": names.get(item.reviewed_by), "decision": item.decision,
            "reviewed_at": datetime.fromtimestamp(item.reviewed_at, UTC).isoformat(),
        })
        for label in item.labels or []:
            x1, y1, x2, y2 = label["box"]
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": category[label["class"]],
                "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)], "area": round((x2 - x1) * (y2 - y1), 2),
                "iscrowd": 0,
            })
    if missing and not skip_missing:
        shutil.rmtree(staging, ignore_errors=True)
        lines = "\n  ".join(missing)
        raise ExportError(f"images missing for {len(missing)} item(s) (--skip-missing exports the rest):\n  {lines}")
    (out / "images").mkdir(exist_ok=True)
    for f in (staging / "images").iterdir():
        os.replace(f, out / "images" / f.name)
    (staging / "corrections.json").write_text(json.dumps(coco, indent=1))
    os.replace(staging / "corrections.json", out / "corrections.json")
    shutil.rmtree(staging, ignore_errors=True)
    return {"images": len(coco["images"]), "annotations": len(coco["annotations"]), "missing": missing,
            "path": str(out / "corrections.json")}
