"""`edgecv app batch`: recorded video files through the model overnight, as fast as the model allows.

    edgecv app batch --config site.yaml VIDEO... --out DIR [--camera ID] [--batch 32] [--decoders 4]

For each VIDEO (stem S) in DIR:
    S.jsonl          one line per frame: {"frame", "t" (video seconds), "detections": [{box, score, class, track_id}]}
    S.events.jsonl   the events the camera's rules fire (the same RuleEngine as live; times in video seconds)
    S.coco.json      COCO results ([{image_id: frame, category_id: class index + 1, bbox: [x, y, w, h], score}])
    S.done           written last: the file counts as finished (frames, seconds, the video's size and mtime)
    categories.json  COCO categories (id = class index + 1, name) matching the results

Resumable: a video whose S.done matches its size and mtime is skipped; any other (never started, or cut
short by a crash) is processed again from its first frame, its outputs rewritten.

How it keeps the model busy: files are decoded and letterboxed in parallel (`decoders` threads; OpenCV's
decoder and resize release the GIL; `capture="gstreamer"` decodes with GStreamer's decodebin, NVDEC on a
Jetson) into one bounded queue; the loop copies frames of any file into the batch buffers (shared memory
with a local Triton) and sends a batch when it is full, `max_inflight` batches in flight.
Frames of one file stay in order (one reader per file, results handled in submission order), so tracking
and rules see each video as a camera would. A failed request is sent again once Triton is back: batch mode
loses no frame.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from app.config import Resolved
from app.pipeline.infer import Result, TritonInfer
from app.pipeline.postprocess import decoder_for
from app.pipeline.preprocess import LetterboxInfo, Preprocessor
from app.pipeline.rules import RuleEngine, RulesConfig
from app.pipeline.tracker import Tracker
from app.pipeline.types import Detections

log = logging.getLogger(__name__)


class BatchError(ValueError):
    """Bad batch-mode input (unreadable video, two videos with one name, batch over the model's maximum)."""


@dataclass
class Video:
    """One input file and its outputs; the per-file state lives here (tracker, rules, writers)."""

    path: Path
    out: Path
    fps: float = 25.0
    frames_expected: int = 0
    read: int = 0  # frames decoded and queued (by the reader)
    queued: int = 0  # frames put into a batch (by the loop): the next frame's index
    done: int = 0  # frames handled (written)
    ended: bool = False  # the reader reached the end
    events: int = 0
    failed: str | None = None  # a decode error: the file is not marked finished, the next run redoes it
    started: float = field(default_factory=time.monotonic)
    tracker: Tracker | None = None
    rules: RuleEngine | None = None
    coco: list = field(default_factory=list)
    _jsonl: Any = None
    _events: Any = None

    @property
    def stem(self) -> str:
        return self.path.stem

    def file(self, suffix: str) -> Path:
        return self.out / f"{self.stem}{suffix}"

    def identity(self) -> dict:
        st = self.path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def finished_before(self) -> bool:
        try:
            marker = json.loads(self.file(".done").read_text())
        except (OSError, ValueError):
            return False
        return marker.get("video") == self.identity()


@dataclass
class BatchSummary:
    videos: int
    skipped: list[str]
    frames: int
    events: int
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


_END = None  # a reader's "this file is over" marker in the frame queue


def plan(videos: Sequence[Path], out: Path) -> tuple[list[Video], list[Video]]:
    """(to do, already finished) for `videos` writing into `out`; BatchError for a missing or ambiguous input."""
    stems: dict[str, Path] = {}
    todo, finished = [], []
    for path in map(Path, videos):
        if not path.is_file():
            raise BatchError(f"{path}: no such video file")
        if path.stem in stems:
            raise BatchError(f"{path} and {stems[path.stem]} would write the same outputs ({path.stem}.*): rename one")
        stems[path.stem] = path
        v = Video(path, out)
        (finished if v.finished_before() else todo).append(v)
    return todo, finished


class BatchRunner:
    """See the module docstring. `infer` may be given (tests); `on_progress(done, total, fps)` is called about
    twice a second."""

    def __init__(
        self,
        resolved: Resolved,
        out: Path,
        *,
        camera_id: str | None = None,
        batch: int | None = None,
        decoders: int = 2,
        capture: str = "opencv",
        queue_frames: int | None = None,
        infer: TritonInfer | None = None,
        on_progress: Callable[[int, int, float], None] | None = None,
    ):
        cfg = resolved.config
        self.resolved, self.manifest, self.out = resolved, resolved.manifest, Path(out)
        t = self.manifest.triton
        self.batch = batch or max([*t.dynamic_batching.preferred_batch_sizes, resolved.max_batch])
        if not 1 <= self.batch <= t.max_batch_size:
            raise BatchError(f"--batch {self.batch}: the model ({self.manifest.ref}) takes at most "
                             f"triton.max_batch_size {t.max_batch_size} images per request")
        cams = {c.id: c for c in cfg.cameras}
        if camera_id is not None and camera_id not in cams:
            raise BatchError(f"--camera {camera_id}: not in the config (cameras: {', '.join(cams)})")
        self.camera = cams[camera_id] if camera_id else cfg.cameras[0]
        self.decoders = max(1, decoders)
        if capture not in ("opencv", "gstreamer"):
            raise BatchError(f"--capture {capture}: choose opencv or gstreamer")
        self.capture = capture
        self.frames: queue.Queue = queue.Queue(queue_frames or 4 * self.batch)
        self.infer = infer or TritonInfer(
            self.manifest, cfg.triton.url, protocol=cfg.triton.protocol, model_name=resolved.model_name,
            max_batch=self.batch, max_inflight=cfg.triton.max_inflight, shared_memory=cfg.triton.use_shared_memory,
            request_timeout_s=max(cfg.triton.request_timeout_s, 30.0),
        )
        self.decode = decoder_for(self.manifest)
        self.classes = list(self.manifest.classes)
        self.on_progress = on_progress
        self._files: queue.Queue[Video] = queue.Queue()
        self._stop = threading.Event()
        self._reader_error: list[str] = []

    # --- readers -----------------------------------------------------------------------------------

    def _read_files(self) -> None:
        # Each reader letterboxes its own frames (cv2 releases the GIL: in parallel with the loop and the
        # other readers); the loop only copies the letterboxed image into the batch buffer.
        pre = Preprocessor(self.manifest.served_input, 1)
        shape, dtype = pre.buffer.shape[1:], pre.buffer.dtype
        while not self._stop.is_set():
            try:
                video = self._files.get_nowait()
            except queue.Empty:
                return
            try:
                for image in self._decode(video):
                    if self._stop.is_set():
                        break
                    placed = np.empty(shape, dtype)
                    info = pre.write_to(placed, image)
                    video.read += 1
                    self._put(video, (placed, info))
            except OSError as exc:
                video.failed = f"{video.path}: {exc}"
                self._reader_error.append(video.failed)
            self._put(video, _END)

    def _decode(self, video: Video):
        """BGR frames of one file, in order: OpenCV's FFmpeg, or GStreamer (decodebin: NVDEC on a Jetson)."""
        if self.capture == "gstreamer":
            from app.pipeline.capture_gst import GstSource, pipeline_description

            src = GstSource(pipeline_description(False, paced=False), str(video.path))
            try:
                while True:
                    image, why = src.pull(30.0)
                    if image is None:
                        if why != "eos":
                            raise OSError(f"GStreamer: {why}")
                        return
                    yield image
            finally:
                src.release()
        cap = cv2.VideoCapture(str(video.path))
        try:
            if not cap.isOpened():
                raise OSError("cannot be opened as a video")
            while True:
                ok, image = cap.read()
                if not ok:
                    return
                yield image
        finally:
            cap.release()

    def _put(self, video: Video, item) -> None:
        while not self._stop.is_set():
            try:
                self.frames.put((video, item), timeout=0.2)
                return
            except queue.Full:
                continue

    # --- the loop ----------------------------------------------------------------------------------

    def run(self, videos: Sequence[Path]) -> BatchSummary:
        self.out.mkdir(parents=True, exist_ok=True)
        todo, finished = plan(videos, self.out)
        for v in finished:
            log.info("%s: finished before, skipped", v.path)
        self._write_categories()
        t0 = time.monotonic()
        if not todo:
            return BatchSummary(0, [str(v.path) for v in finished], 0, 0, 0.0)
        for v in todo:
            self._open(v)
            self._files.put(v)
        total = sum(v.frames_expected for v in todo)
        self.infer.start(self.resolved.config.triton.ready_timeout_s)
        readers = [threading.Thread(target=self._read_files, name=f"batch-reader-{i}", daemon=True)
                   for i in range(min(self.decoders, len(todo)))]
        for r in readers:
            r.start()
        try:
            frames = self._loop(todo, total, t0)
        finally:
            self._stop.set()
            for r in readers:
                r.join(5)
            self.infer.close()
            for v in todo:
                self._close_files(v)
        if self._reader_error:
            raise BatchError("; ".join(self._reader_error))
        return BatchSummary(len(todo), [str(v.path) for v in finished], frames, sum(v.events for v in todo),
                            time.monotonic() - t0)

    def _loop(self, todo: list[Video], total: int, t0: float) -> int:
        open_files = len(todo)
        batch: list[tuple[Video, int, LetterboxInfo]] = []
        slot = None
        submitted, handled = 0, 0
        done: dict[int, Result] = {}
        contexts: dict[int, tuple] = {}  # seq -> (slot, batch) until handled, for resending after a failure
        frames, progress_at = 0, 0.0
        while open_files or batch or handled < submitted:
            for r in self.infer.results():
                done[r.context] = r
            while handled in done:  # in submission order: each file's frames reach its tracker in order
                r = done.pop(handled)
                if r.error is not None:
                    self._resend(r, contexts[handled])
                    continue
                slot_used, items = contexts.pop(handled)
                frames += self._handle(r, items)
                self.infer.release(slot_used)
                handled += 1
                for v, _, _ in items:
                    if v.ended and v.done == v.read and not v.file(".done").exists():
                        self._finish(v)
            if slot is None:
                slot = self.infer.acquire()
            got_end = False
            while slot is not None and len(batch) < self.batch:
                try:
                    video, item = self.frames.get(timeout=0.002 if batch or handled < submitted else 0.05)
                except queue.Empty:
                    break
                if item is _END:
                    video.ended, got_end = True, True
                    open_files -= 1
                    if video.done == video.read:  # an empty (or fully handled) file
                        self._finish(video)
                    continue
                placed, info = item
                slot.input[len(batch)] = placed
                batch.append((video, video.queued, info))
                video.queued += 1
            # Send when full; a partial batch only when no more frames are coming soon.
            if batch and slot is not None and (len(batch) == self.batch or self.frames.empty() or got_end):
                contexts[submitted] = (slot, batch)
                self.infer.submit(slot, len(batch), submitted)
                submitted += 1
                batch, slot = [], None
            elif slot is None or (not batch and handled < submitted):
                time.sleep(0.0005)  # every buffer in flight: wait for a result
            now = time.monotonic()
            if self.on_progress is not None and now - progress_at >= 0.5:
                progress_at = now
                self.on_progress(frames, total, frames / max(now - t0, 1e-9))
        if self.on_progress is not None:
            self.on_progress(frames, total, frames / max(time.monotonic() - t0, 1e-9))
        return frames

    def _resend(self, result: Result, context: tuple) -> None:
        """A failed batch goes again (same slot, same pixels) once Triton is ready: nothing is lost."""
        slot, items = context
        log.warning("batch of %d failed (%s); resending when Triton is ready", len(items), result.error)
        deadline = time.monotonic() + self.resolved.config.triton.ready_timeout_s
        while not self.infer.ready:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Triton not ready again within {self.resolved.config.triton.ready_timeout_s}s")
            time.sleep(0.1)
        self.infer.submit(slot, len(items), result.context)

    def _handle(self, result: Result, items: list[tuple[Video, int, LetterboxInfo]]) -> int:
        dets = self.decode(result.outputs, [info for _, _, info in items])
        for (video, index, _), d in zip(items, dets, strict=True):
            self._record(video, index, d)
        return len(items)

    # --- per file ----------------------------------------------------------------------------------

    def _open(self, v: Video) -> None:
        cap = cv2.VideoCapture(str(v.path))
        if not cap.isOpened():
            cap.release()
            raise BatchError(f"{v.path}: cannot be opened as a video")
        fps = cap.get(cv2.CAP_PROP_FPS)
        v.fps = fps if 1 <= fps <= 240 else 25.0
        v.frames_expected = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        cap.release()
        cfg = self.resolved.config
        v.tracker = Tracker(cfg.tracker)
        v.rules = RuleEngine.from_config(
            self.camera.rules_config if self.camera else RulesConfig(), self.classes, site_id=cfg.site_id,
            device_id=cfg.device_id, camera_id=v.stem, model_ref=self.manifest.ref)
        v.file(".done").unlink(missing_ok=True)  # a stale marker of an older video by this name
        v._jsonl = v.file(".jsonl").open("w")
        v._events = v.file(".events.jsonl").open("w")

    def _record(self, v: Video, index: int, dets: Detections) -> None:
        t = index / v.fps
        tracked = v.tracker.update(dets, t)
        events = v.rules.process(tracked, t, index)
        # Every detection is written (the COCO results must not depend on the tracker); those the tracker
        # kept carry their track id, the others -1.
        boxes = np.round(dets.boxes.astype(np.float64), 2).tolist()
        scores = np.round(dets.scores.astype(np.float64), 4).tolist()
        classes, tracks = dets.class_ids.tolist(), track_ids_of(dets, tracked).tolist()
        v._jsonl.write(json.dumps({"frame": index, "t": round(t, 4), "detections": [
            {"box": b, "score": s, "class": self.classes[c], "track_id": k}
            for b, s, c, k in zip(boxes, scores, classes, tracks, strict=True)]}) + "\n")
        for b, s, c in zip(boxes, scores, classes, strict=True):
            v.coco.append({"image_id": index, "category_id": c + 1,
                           "bbox": [b[0], b[1], round(b[2] - b[0], 2), round(b[3] - b[1], 2)], "score": s})
        for e in events:
            v._events.write(json.dumps(e.to_payload()) + "\n")
        v.events += len(events)
        v.done += 1

    def _finish(self, v: Video) -> None:
        self._close_files(v)
        if v.failed:
            log.error("%s; not marked finished", v.failed)
            return
        _atomic_json(v.file(".coco.json"), v.coco)
        _atomic_json(v.file(".done"), {"video": v.identity(), "frames": v.done, "events": v.events,
                                       "model": self.manifest.ref, "seconds": round(time.monotonic() - v.started, 3)})
        log.info("%s: %d frames, %d events", v.path, v.done, v.events)

    def _close_files(self, v: Video) -> None:
        for f in (v._jsonl, v._events):
            if f is not None and not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()

    def _write_categories(self) -> None:
        _atomic_json(self.out / "categories.json", [{"id": i + 1, "name": c} for i, c in enumerate(self.classes)])


def track_ids_of(dets: Detections, tracked: Detections) -> np.ndarray:
    """Per detection, the track id the tracker gave it (-1 when left out); `tracked` is an ordered subset."""
    ids = np.full(len(dets), -1, np.int64)
    k = 0
    for i in range(len(dets)):
        if k < len(tracked) and np.array_equal(dets.boxes[i], tracked.boxes[k]):
            ids[i] = tracked.track_ids[k]
            k += 1
    return ids


def _atomic_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(json.dumps(data))  # json.dump would stream through the pure-Python encoder: 10x slower
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
