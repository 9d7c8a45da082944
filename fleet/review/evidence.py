"""From an evidence package (event.json schema v1 + clip.mp4, written by app.evidence.packager) to a review item.

The item's frame is the clip's frame nearest the event time, with that frame's detections as the
model's boxes; the clip is referenced by its path in the evidence store, so the reviewer can play it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import av
import cv2
import jsonschema
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from fleet.spec.events import EVENT_SCHEMA_PATH as SCHEMA_PATH


class PackageError(ValueError):
    pass


def _frame_jpeg(clip: Path, index: int) -> bytes:
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                ok, buf = cv2.imencode(".jpg", frame.to_ndarray(format="bgr24"), [cv2.IMWRITE_JPEG_QUALITY, 90])
                if not ok:
                    break
                return buf.tobytes()
    raise PackageError(f"{clip}: frame {index} not found or not encodable")


def item_from_package(package: Path, evidence_root: Path | None = None, reason: str = "alert") -> dict:
    """The POST /api/items body for one package directory."""
    path = package / "event.json"
    try:
        doc = json.loads(path.read_text())
        jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))
    except OSError as exc:
        raise PackageError(f"{path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise PackageError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from exc
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        raise PackageError(f"{path}: {where}: {exc.message}") from exc
    frame = min(doc["frames"], key=lambda f: abs(f["time"] - doc["event_time"]))
    clip = package / doc["clip"]["file"]
    body = {
        "id": doc["event_id"], "reason": reason, "site": doc["site"], "device": doc["device"],
        "camera": doc["camera"], "model": doc["model"], "event_id": doc["event_id"], "captured_at": frame["time"],
        "image": base64.b64encode(_frame_jpeg(clip, frame["index"])).decode(),
        "boxes": [{"box": d["box"], "class": d["class"], "score": d["score"], "track_id": d["track_id"]}
                  for d in frame["detections"]],
    }
    if evidence_root is not None:
        try:
            body["clip_path"] = str(clip.resolve().relative_to(evidence_root.resolve()))
        except ValueError as exc:
            raise PackageError(f"{package} is not inside the evidence root {evidence_root}") from exc
    return body


class _Retry(Exception):
    pass


@retry(retry=retry_if_exception_type(_Retry), stop=stop_after_attempt(4), wait=wait_exponential(0.5, max=8),
       reraise=True)
def post_item(http, url: str, token: str, body: dict) -> dict:
    """POST one item; retries while the service is unreachable or answers 5xx. `http`: a requests.Session."""
    try:
        r = http.post(f"{url.rstrip('/')}/api/items", json=body, headers={"Authorization": f"Bearer {token}"},
                      timeout=30)
    except OSError as exc:  # requests' connection errors and timeouts are OSErrors
        raise _Retry(str(exc)) from exc
    if r.status_code >= 500:
        raise _Retry(f"{r.status_code}: {r.text[:200]}")
    if r.status_code not in (200, 201):
        raise PackageError(f"item {body['id']}: {r.status_code} {r.text[:500]}")
    return r.json()
