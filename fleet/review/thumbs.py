"""Queue thumbnails: a 160 px wide JPEG per item, made on first request from the local image, then kept."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2

from fleet.review.errors import FieldError
from fleet.review.ingest import evidence_file
from fleet.review.models import Item
from fleet.review.settings import ReviewSettings
from fleet.review.storage import private_dir

WIDTH = 160


def thumbnail(settings: ReviewSettings, item: Item) -> Path | None:
    """The thumbnail's path, or None when the item's image is remote (image_url) or gone."""
    out = settings.data_dir / "thumbs" / f"{item.id}.jpg"
    if out.is_file():
        return out
    if item.image_file:
        source = settings.data_dir / "images" / item.image_file
    elif item.image_path:
        try:
            source = evidence_file(settings, item.image_path, "image_path")
        except FieldError:
            return None
    else:
        return None
    img = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    small = cv2.resize(img, (WIDTH, max(1, round(h * WIDTH / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        return None
    fd, tmp = tempfile.mkstemp(dir=private_dir(out.parent), prefix=".thumb-")
    with os.fdopen(fd, "wb") as f:
        f.write(buf.tobytes())
    os.replace(tmp, out)  # two first requests at once: both write whole files, the last one stays
    return out
