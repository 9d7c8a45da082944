"""Storing a flagged item: idempotent by item id (a re-sent item changes nothing), image kept or referenced.

Images arrive as base64 JPEG (stored under data_dir/images/), as a path inside the local evidence
store, or as an http(s) URL into an allowed evidence store (then the device must say width and height).
A token files items only for its own device (unless made for an uploader); the same id sent again with
other content is a Conflict (409), never a silent drop. A clip must be a video by its content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np
from sqlalchemy.exc import IntegrityError

from fleet.review.db import Database
from fleet.review.errors import Conflict, FieldError, Forbidden
from fleet.review.fetch import FetchRefused, check_url
from fleet.review.models import PRIORITY, Audit, DeviceToken, Item, ItemClass
from fleet.review.schemas import IngestItem
from fleet.review.settings import ReviewSettings

BOX_TOLERANCE_PX = 1.0


def evidence_file(settings: ReviewSettings, rel: str, field: str) -> Path:
    """A path inside the evidence root; never outside it (no '..', no absolute paths)."""
    if settings.evidence_root is None:
        raise FieldError(field, "this server has no evidence root (edgecv review serve --evidence-root)")
    if "\x00" in rel or Path(rel).is_absolute():
        raise FieldError(field, "must be a path relative to the evidence store, without NUL bytes")
    root = settings.evidence_root.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise FieldError(field, f"{rel!r} is outside the evidence store")
    if not path.is_file():
        raise FieldError(field, f"{rel!r} not found in the evidence store")
    return path


def _check_video(path: Path, field: str) -> None:
    """A clip is played to reviewers as video: refuse anything that does not open as one."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise FieldError(field, "has no video stream")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise FieldError(field, f"not a video file ({exc.__class__.__name__})") from exc


def payload_digest(item: IngestItem) -> str:
    return hashlib.sha256(json.dumps(item.model_dump(mode="json", by_alias=True), sort_keys=True,
                                     separators=(",", ":")).encode()).hexdigest()


def _same_or_conflict(existing: Item, digest: str) -> tuple[Item, bool]:
    if existing.payload_sha256 not in (None, digest):
        raise Conflict(f"item {existing.id!r} exists with different content (from {existing.device}); "
                       "an id names one item: send a new id")
    return existing, False


def _image_size(data: bytes, field: str) -> tuple[int, int]:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise FieldError(field, "not a decodable image")
    return int(img.shape[1]), int(img.shape[0])


def _decode_base64_jpeg(text: str, limit: int) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FieldError("image", f"not valid base64 ({exc})") from exc
    if len(data) > limit:
        raise FieldError("image", f"{len(data)} bytes, more than the {limit} allowed")
    if not data.startswith(b"\xff\xd8\xff"):
        raise FieldError("image", "expected a JPEG (base64 of the .jpg bytes)")
    return data


def _check_boxes(item: IngestItem, width: int, height: int) -> None:
    t = BOX_TOLERANCE_PX
    for i, pred in enumerate(item.boxes):
        x1, y1, x2, y2 = pred.box
        if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
            raise FieldError(f"boxes[{i}].box", f"{list(pred.box)} is outside the {width}x{height} frame")


def ingest(db: Database, settings: ReviewSettings, item: IngestItem, token: DeviceToken) -> tuple[Item, bool]:
    """(the stored item, True when it is new). Raises FieldError on bad input, Forbidden for another
    device's item, Conflict for an existing id with other content; stores nothing then."""
    if not token.any_device and item.device != token.name:
        raise Forbidden(f"this token belongs to device {token.name!r}; it cannot file items as {item.device!r}")
    digest = payload_digest(item)
    with db.read() as s:
        existing = s.get(Item, item.id)
    if existing is not None:
        return _same_or_conflict(existing, digest)
    for field in ("image_url", "clip_url"):
        if getattr(item, field) is not None:
            try:
                check_url(str(getattr(item, field)), settings.image_url_allow)
            except FetchRefused as exc:
                raise FieldError(field, str(exc)) from exc

    jpeg: bytes | None = None
    width, height = item.width, item.height
    if item.image is not None:
        jpeg = _decode_base64_jpeg(item.image, settings.max_image_bytes)
        size = _image_size(jpeg, "image")
    elif item.image_path is not None:
        size = _image_size(evidence_file(settings, item.image_path, "image_path").read_bytes(), "image_path")
    else:
        size = (width, height)
    if (width, height) != (None, None) and (width, height) != size:
        raise FieldError("width", f"width/height {width}x{height} differ from the image's {size[0]}x{size[1]}")
    width, height = size
    _check_boxes(item, width, height)
    if item.clip_path is not None:
        _check_video(evidence_file(settings, item.clip_path, "clip_path"), "clip_path")

    classes = item.classes or list(dict.fromkeys(p.class_name for p in item.boxes))
    row = Item(
        id=item.id, reason=item.reason, priority=PRIORITY[item.reason], site=item.site, device=item.device,
        camera=item.camera, model=item.model, classes=classes, width=width, height=height,
        image_file=f"{item.id}.jpg" if jpeg is not None else None, image_path=item.image_path,
        image_url=str(item.image_url) if item.image_url else None, clip_path=item.clip_path,
        clip_url=str(item.clip_url) if item.clip_url else None, event_id=item.event_id,
        predictions=[p.as_prediction() for p in item.boxes], captured_at=item.captured_at,
        created_at=db.now(), status="pending", payload_sha256=digest,
    )
    tmp: Path | None = None
    if jpeg is not None:
        images = settings.data_dir / "images"
        images.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=images, prefix=".upload-")
        with os.fdopen(fd, "wb") as f:
            f.write(jpeg)
        tmp = Path(name)
    try:
        with db.write() as s:
            if (stored := s.get(Item, item.id)) is not None:
                return _same_or_conflict(stored, digest)
            s.add(row)
            s.add_all(ItemClass(item_id=item.id, class_name=c) for c in classes)
            s.add(Audit(at=row.created_at, actor=f"device:{token.name}", item_id=item.id, action="ingest",
                        detail={"reason": item.reason, "boxes": len(item.boxes)}))
            s.flush()
            if tmp is not None:  # only the first sender's image takes the name
                os.replace(tmp, settings.data_dir / "images" / row.image_file)
                tmp = None
    except IntegrityError:  # the same id sent twice at once: the other request stored it
        with db.read() as s:
            return _same_or_conflict(s.get(Item, item.id), digest)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return row, True
