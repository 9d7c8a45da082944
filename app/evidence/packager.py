"""Evidence packaging: per-camera pre-roll ring buffer -> clip.mp4 (H.264) + event.json + thumbnail.

Frames are kept JPEG-compressed in a ring capped in bytes, so pre-roll costs little memory. The ring
holds every frame the camera delivered, also those a newer frame replaced before inference (added
with `advance=False`: they carry no detections and do not move the post-roll clock, since frames that
went through inference arrive later than the camera delivered them).
When an event fires it waits for its post-roll, then the clip is encoded on a worker thread
(off the hot path) and the package is written atomically: built in a hidden temp directory
and renamed into place, so the uploader never sees half a package.

The clip is variable frame rate: each frame's pts is its capture time (a camera's rate is neither
constant nor a whole number), and the MP4 is faststart (moov before mdat) so a browser plays it while
it downloads.
"""

from __future__ import annotations

import bisect
import errno
import json
import logging
import os
import shutil
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.metrics import Metrics
from app.pipeline.types import Detections, Event
from fleet.spec.events import EVENT_SCHEMA_PATH

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA_PATH = EVENT_SCHEMA_PATH
PTS_TIME_BASE = Fraction(1, 90_000)  # the usual video clock: capture times kept to 11 microseconds


def iso_utc(t: float) -> str:
    """A Unix time as ISO 8601 in UTC, to the millisecond: 2026-11-30T19:32:18.123Z."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EvidenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dir: Path = Path("/var/lib/edgecv/evidence")
    pre_roll_s: float = Field(5.0, ge=0, le=30)
    post_roll_s: float = Field(5.0, ge=0, le=30)
    ring_bytes: int = Field(64 << 20, gt=0, description="memory cap of one camera's ring buffer")
    jpeg_quality: int = Field(80, ge=30, le=100)
    context_window_s: float = Field(300.0, ge=0, description="related events within this window")
    disk_budget_bytes: int = Field(2 << 30, gt=0)


@dataclass(slots=True)
class StoredFrame:
    time: float
    seq: int
    jpeg: bytes
    detections: Detections | None


class FrameRing:
    """Recent frames of one camera, JPEG-compressed, capped in bytes and in age."""

    def __init__(self, max_bytes: int, max_age_s: float, quality: int = 80):
        self.max_bytes, self.max_age_s, self.quality = max_bytes, max_age_s, quality
        self.frames: deque[StoredFrame] = deque()
        self.bytes = 0
        self.lock = threading.Lock()

    def add(self, t: float, seq: int, image: np.ndarray, detections: Detections | None = None) -> None:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return
        with self.lock:
            stored = StoredFrame(t, seq, buf.tobytes(), detections)
            # Frames come nearly in capture order (replaced frames overtake the ones still in inference).
            if not self.frames or self.frames[-1].time <= t:
                self.frames.append(stored)
            else:
                self.frames.insert(bisect.bisect_right(self.frames, t, key=lambda f: f.time), stored)
            self.bytes += len(buf)
            newest = self.frames[-1].time
            while self.frames and (self.bytes > self.max_bytes or newest - self.frames[0].time > self.max_age_s):
                self.bytes -= len(self.frames.popleft().jpeg)

    def attach(self, seq: int, detections: Detections) -> None:
        """Detections arrive after the frame (inference is later in the pipeline)."""
        with self.lock:
            for f in reversed(self.frames):
                if f.seq == seq:
                    f.detections = detections
                    return

    def between(self, start: float, end: float) -> list[StoredFrame]:
        with self.lock:
            return [f for f in self.frames if start <= f.time <= end]


def encode_h264(frames: list[np.ndarray], times: list[float], path: Path) -> dict:
    """Encode BGR frames to a browser-playable, faststart MP4 (H.264, yuv420p) with each frame's pts at its
    capture time relative to the first. Returns clip facts."""
    h, w = frames[0].shape[:2]
    w2, h2 = w - w % 2, h - h % 2  # yuv420p needs even sizes
    span = times[-1] - times[0]
    fps = (len(frames) - 1) / span if len(frames) > 1 and span > 0 else 1.0
    # movflags is an option of the MP4 muxer (the container), not of the encoder: there it is ignored.
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
        stream.time_base = PTS_TIME_BASE
        stream.codec_context.time_base = PTS_TIME_BASE
        stream.options = {"preset": "veryfast", "crf": "23"}
        last = -1
        for img, t in zip(frames, times, strict=True):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:h2, :w2]), format="bgr24")
            pts = max(round((t - times[0]) / PTS_TIME_BASE), last + 1)  # strictly increasing, as MP4 needs
            frame.pts, frame.time_base, last = pts, PTS_TIME_BASE, pts
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {"fps": round(float(fps), 3), "frames": len(frames), "width": w2, "height": h2, "codec": "h264",
            "variable_frame_rate": True, "faststart": True}


def draw_boxes(image: np.ndarray, dets: Detections | None, class_names: list[str]) -> np.ndarray:
    out = image.copy()
    if dets is None:
        return out
    for box, cls, score, tid in zip(dets.boxes, dets.class_ids, dets.scores, dets.track_ids, strict=True):
        x1, y1, x2, y2 = (int(v) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 200, 255), 2)
        label = f"{class_names[int(cls)]} {score:.2f}" + (f" #{int(tid)}" if tid >= 0 else "")
        cv2.putText(out, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 200, 255), 1)
    return out


def _detections_json(dets: Detections | None, class_names: list[str]) -> list[dict]:
    if dets is None:
        return []
    return [
        {
            "box": [round(float(v), 1) for v in box],
            "class": class_names[int(cls)],
            "class_id": int(cls),
            "score": round(float(score), 4),
            "track_id": int(tid),
        }
        for box, cls, score, tid in zip(dets.boxes, dets.class_ids, dets.scores, dets.track_ids, strict=True)
    ]


def _event_frame(event: Event, frames: list[StoredFrame]) -> int:
    """Index of the event's own frame (its frame_seq), else of the nearest frame that went through inference."""
    for i, f in enumerate(frames):
        if f.seq == event.frame_seq:
            return i
    candidates = [i for i, f in enumerate(frames) if f.detections is not None] or list(range(len(frames)))
    return min(candidates, key=lambda i: abs(frames[i].time - event.time))


@dataclass
class _Pending:
    event: Event
    due: float  # wall time when the post-roll is complete


class EvidencePackager:
    """Owns one ring per camera; `on_event` schedules a package once the post-roll is recorded."""

    def __init__(self, config: EvidenceConfig, class_names: list[str], metrics: Metrics | None = None,
                 admit=None):
        self.config, self.class_names, self.metrics = config, class_names, metrics
        self.admit = admit or (lambda: True)  # retention's say on whether there is room
        self.rings: dict[str, FrameRing] = {}
        self.pending: list[_Pending] = []
        self.recent: deque[Event] = deque(maxlen=1000)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evidence")
        self.futures: list[Future] = []
        self.lock = threading.Lock()
        config.dir.mkdir(parents=True, exist_ok=True)

    def ring(self, camera_id: str) -> FrameRing:
        if camera_id not in self.rings:
            age = self.config.pre_roll_s + self.config.post_roll_s + 2.0
            self.rings[camera_id] = FrameRing(self.config.ring_bytes, age, self.config.jpeg_quality)
        return self.rings[camera_id]

    def add_frame(self, camera_id: str, t: float, seq: int, image: np.ndarray,
                  detections: Detections | None = None, advance: bool = True) -> None:
        """`advance=False` for a frame that never reached inference: it goes into the clips but does not
        complete a post-roll (a frame still in inference may be older than it)."""
        self.ring(camera_id).add(t, seq, image, detections)
        if advance:
            self._flush_due(t)

    def on_event(self, event: Event) -> bool:
        """Schedule evidence for `event`; False when retention refuses (admit() gives False or its reason)."""
        room = self.admit()
        if room is not True:
            reason = room or "budget"
            if self.metrics:
                self.metrics.evidence_refused.labels(reason).inc()
            log.warning("evidence refused for %s: no room (%s)", event.event_id, reason)
            return False
        with self.lock:
            self.pending.append(_Pending(event, event.time + self.config.post_roll_s))
        return True

    def _flush_due(self, now: float) -> None:
        with self.lock:
            due = [p for p in self.pending if p.due <= now]
            self.pending = [p for p in self.pending if p.due > now]
        for p in due:
            start = p.event.time - self.config.pre_roll_s
            frames = self.ring(p.event.camera_id).between(start, p.due)
            related = self._related(p.event)
            self.recent.append(p.event)
            if frames:
                self.futures.append(self.pool.submit(self._write, p.event, frames, related))

    def flush_all(self, timeout: float = 60.0) -> list[Path]:
        """Package every pending event now (shutdown) and wait for the encoder."""
        self._flush_due(float("inf"))
        out = [f.result(timeout) for f in self.futures]
        self.futures.clear()
        return [p for p in out if p]

    def close(self) -> None:
        self.flush_all()
        self.pool.shutdown(wait=True)

    def _related(self, event: Event) -> list[dict]:
        window = self.config.context_window_s
        out = []
        for other in self.recent:
            if other.event_id == event.event_id or abs(other.time - event.time) > window:
                continue
            if other.camera_id == event.camera_id:
                relation = "same_track" if other.track_id == event.track_id else "same_camera"
                out.append({"event_id": other.event_id, "time": other.time, "time_utc": iso_utc(other.time),
                            "rule": other.rule, "relation": relation})
        return out

    def _write(self, event: Event, frames: list[StoredFrame], related: list[dict]) -> Path | None:
        final = self.config.dir / event.event_id
        tmp = self.config.dir / f".tmp-{event.event_id}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            images = [cv2.imdecode(np.frombuffer(f.jpeg, np.uint8), cv2.IMREAD_COLOR) for f in frames]
            clip = encode_h264(images, [f.time for f in frames], tmp / "clip.mp4")
            clip.update(file="clip.mp4", start_time=frames[0].time, end_time=frames[-1].time,
                        start_time_utc=iso_utc(frames[0].time), end_time_utc=iso_utc(frames[-1].time),
                        event_offset_s=round(event.time - frames[0].time, 6))
            nearest = _event_frame(event, frames)
            thumb = draw_boxes(images[nearest], frames[nearest].detections, self.class_names)
            cv2.imwrite(str(tmp / "thumbnail.jpg"), thumb)
            doc = self._document(event, frames, clip, related)
            (tmp / "event.json").write_text(json.dumps(doc, indent=1))
            if final.exists():  # already packaged (a replayed event): keep the first
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
            if self.metrics:
                self.metrics.evidence_written.inc()
            return final
        except Exception as exc:  # a failed package must not kill the encoder thread
            log.exception("evidence for %s failed", event.event_id)
            if self.metrics:  # counted: ENOSPC and friends must show on the dashboard, not only in a log
                full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
                self.metrics.evidence_refused.labels("disk_full" if full else "write_failed").inc()
            shutil.rmtree(tmp, ignore_errors=True)
            return None

    def _document(self, event: Event, frames: list[StoredFrame], clip: dict, related: list[dict]) -> dict:
        # The rule's own facts, as the MQTT payload carries them (zone, line, direction, dwell_s).
        where = {k: event.extra[k] for k in ("zone", "line", "direction", "dwell_s") if k in event.extra}
        return {
            "schema_version": SCHEMA_VERSION,
            "event_id": event.event_id,
            "created_at": iso_utc(datetime.now(timezone.utc).timestamp()),
            "event_time": event.time,
            "event_time_utc": iso_utc(event.time),
            "frame_seq": int(event.frame_seq),
            **where,
            "site": event.site_id,
            "device": event.device_id,
            "camera": event.camera_id,
            "model": event.model,
            "rule": {"name": event.rule, "kind": event.kind},
            "class": event.class_name,
            "score": round(float(event.score), 4),
            "track_id": int(event.track_id),
            "box": [round(float(v), 1) for v in event.box],
            "clip": clip,
            "thumbnail": "thumbnail.jpg",
            "frames": [
                {"index": i, "time": f.time, "time_utc": iso_utc(f.time), "seq": f.seq,
                 "inferred": f.detections is not None,
                 "detections": _detections_json(f.detections, self.class_names)}
                for i, f in enumerate(frames)
            ],
            "context": {"window_s": self.config.context_window_s, "related_events": related},
        }

