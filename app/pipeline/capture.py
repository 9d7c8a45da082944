"""Camera capture: one reader thread per camera (OpenCV's FFmpeg backend), newest frame wins.

Facts behind the settings: with default options a stalled RTSP server blocks `read()` for over 90 s, so the
open and read timeouts are always passed; TCP transport and a small probe cut the first frame from about
1 s to 0.3 s. A lost or refused stream is reopened with exponential backoff and jitter (cameras that come
back together do not reconnect in lock-step). File sources play at their own frame rate and loop.

A frozen stream (the server keeps the TCP connection open and sends nothing) is caught by frame age, not by
OpenCV's read timeout alone (its grab() returned True twice after the timeout fired: 3x the timeout to notice):
`watch()`, called by the pipeline loop a few times a second, marks a camera down once its newest frame is
older than the stall timeout (the read timeout, at least three frame periods), and the reader abandons a
stream whose grab() took longer than that. Why a camera is down (refused, unresolvable, timeout,
open_failed, stalled, ended) is kept in `last_error` for /healthz and in edgecv_camera_error{reason}.

A reader never queues: it keeps one frame in a `FrameSlot`; a frame not taken before the next arrives is
dropped and counted (edgecv_frames_dropped_total{reason="stale"}), so a slow pipeline sees fresh frames.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

# Read by OpenCV at every open; set before the first VideoCapture. An operator's own value wins.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp|probesize;32768|analyzeduration;200000")

import cv2  # noqa: E402  (after the environment above)

from app.pipeline.types import Frame  # noqa: E402

log = logging.getLogger(__name__)


class FrameSlot:
    """Holds the newest frame of one camera; `put` replaces (and returns) an untaken older one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None

    def put(self, frame: Frame) -> Frame | None:
        with self._lock:
            old, self._frame = self._frame, frame
        return old

    def take(self) -> Frame | None:
        with self._lock:
            frame, self._frame = self._frame, None
        return frame

    def peek(self) -> Frame | None:
        return self._frame


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff with jitter: base*2^(attempt-1), capped, then scaled by a random 0.5-1.0."""
    return min(max_s, base_s * 2 ** max(0, attempt - 1)) * random.uniform(0.5, 1.0)


class CameraReader:
    """Reads one camera in a thread into `slot`. `on_frame()` (if given) is called after each new frame.

    `is_stream` False means a file: played at its native rate (or `fps` if lower) and looped at the end.
    Metrics (app.metrics.Metrics, optional): frames, frames_dropped{stale}, camera_reconnects, camera_up,
    camera_target_fps.
    """

    def __init__(
        self,
        camera_id: str,
        source: str,
        *,
        is_stream: bool,
        fps: float | None = None,
        open_timeout_ms: int = 5000,
        read_timeout_ms: int = 3000,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 10.0,
        metrics=None,
        on_frame: Callable[[], None] | None = None,
        on_stale: Callable[[Frame], None] | None = None,
    ):
        self.camera_id, self.source, self.is_stream, self.fps = camera_id, source, is_stream, fps
        self.open_timeout_ms, self.read_timeout_ms = open_timeout_ms, read_timeout_ms
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.metrics, self.on_frame = metrics, on_frame
        self.on_stale = on_stale  # gets each frame replaced before it was taken (evidence keeps them)
        self.slot = FrameSlot()
        self.frames_read = 0  # frames delivered to the slot
        self.dropped = 0  # frames overwritten in the slot before being taken
        self.reconnects = 0
        self.up = False
        self.last_error: str | None = None  # why the camera is down now ("refused: ...", "stalled: ...")
        self.error_reason: str | None = None  # its short class, the metric's label
        self.last_frame_at = 0.0  # monotonic time of the newest frame delivered
        period = 1.0 / fps if fps else 0.0
        self.stall_after_s = max(read_timeout_ms / 1000.0, 3 * period)
        self._seq = 0
        self._stalled = False
        self._next_due = 0.0  # monotonic time the fps cap lets the next frame through
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if metrics is not None and fps:
            metrics.camera_target_fps.labels(camera_id).set(fps)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> CameraReader:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"camera-{self.camera_id}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop reading; waits up to the read timeout for a blocked read to return."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.read_timeout_ms / 1000 + 2)
            self._thread = None
        self._set_up(False)

    def take(self) -> Frame | None:
        return self.slot.take()

    def watch(self, now: float | None = None) -> bool:
        """The stall watchdog: mark the camera down when its newest frame is too old. Returns `up`."""
        now = time.monotonic() if now is None else now
        if self.up and self.is_stream and now - self.last_frame_at > self.stall_after_s:
            self._set_error("stalled", f"no frame for {now - self.last_frame_at:.1f}s (connection open, no data)")
            self._set_up(False)
        return self.up

    # --- the reader thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                failures = self._connect_once(failures)
            except Exception:  # the reader must outlive any one failure: log, count, pause, go on
                log.exception("camera %s: reader turn failed; retrying", self.camera_id)
                if self.metrics is not None:
                    self.metrics.thread_errors.labels(f"camera-{self.camera_id}").inc()
                self._set_up(False)
                self._stop.wait(self.backoff_max_s / 2)
        self._set_up(False)

    def _connect_once(self, failures: int) -> int:
        """Open the source, read it until it ends or fails, back off; returns the failure count."""
        cap = self._open()
        delivered = 0
        self._stalled = False
        if cap is not None:
            try:
                delivered = self._read_until_end(cap)
            finally:
                cap.release()
        if self._stop.is_set() or (not self.is_stream and delivered):
            return 0  # stopping, or the end of a good file: loop from the start
        if cap is not None and not self._stalled:
            self._set_error("ended", "stream ended" if delivered else "opened but no frame read")
        self._set_up(False)
        failures = 1 if delivered else failures + 1
        self.reconnects += 1
        if self.metrics is not None:
            self.metrics.camera_reconnects.labels(self.camera_id).inc()
        delay = backoff_delay(failures, self.backoff_base_s, self.backoff_max_s)
        log.warning("camera %s: %s; reconnecting in %.1fs", self.camera_id, self.last_error, delay)
        self._stop.wait(delay)
        return failures

    @property
    def alive(self) -> bool:
        """False once started and the reader thread has died."""
        return self._thread is None or self._thread.is_alive()

    def _open(self) -> cv2.VideoCapture | None:
        if self.is_stream and not self._reachable():
            return None
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.open_timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                  self.read_timeout_ms]
        cap = cv2.VideoCapture(self.source, cv2.CAP_FFMPEG, params)
        if cap.isOpened():
            return cap
        cap.release()
        self._set_error("open_failed", "the server answered but no stream opened (path, codec or credentials?)"
                        if self.is_stream else f"cannot open {self.source}")
        return None

    def _reachable(self) -> bool:
        """Connect to the stream's host:port first: FFmpeg says why only in its own log; we say it here."""
        parts = urlsplit(self.source)
        try:
            port = parts.port or {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}.get(parts.scheme, 554)
            with socket.create_connection((parts.hostname, port), timeout=self.open_timeout_ms / 1000):
                return True
        except socket.gaierror as exc:
            self._set_error("unresolvable", f"cannot resolve {parts.hostname}: {exc.strerror}")
        except ConnectionRefusedError:
            self._set_error("refused", f"connection refused by {parts.hostname}:{parts.port}")
        except TimeoutError:
            self._set_error("timeout", f"no answer from {parts.hostname}:{parts.port} "
                                       f"in {self.open_timeout_ms / 1000:.1f}s")
        except (OSError, ValueError) as exc:
            self._set_error("unreachable", f"{parts.hostname}:{parts.port}: {exc}")
        return False

    def _set_error(self, reason: str, detail: str) -> None:
        if self.metrics is not None and reason != self.error_reason:
            if self.error_reason is not None:
                self.metrics.camera_error.labels(self.camera_id, self.error_reason).set(0)
            self.metrics.camera_error.labels(self.camera_id, reason).set(1)
        self.error_reason, self.last_error = reason, f"{reason}: {detail}"

    def _read_until_end(self, cap: cv2.VideoCapture) -> int:
        """Deliver frames until the source ends, fails or we stop; returns how many were delivered."""
        src_fps = cap.get(cv2.CAP_PROP_FPS)
        src_fps = src_fps if 1 <= src_fps <= 240 else 25.0
        period = 1.0 / self.fps if self.fps else 0.0
        started = time.monotonic()
        delivered = 0
        k = 0
        while not self._stop.is_set():
            if not self.is_stream:  # files play in real time: frame k is shown at k / fps
                wait = started + k / src_fps - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    break
            k += 1
            asked = time.monotonic()
            if not cap.grab():
                break
            now = time.monotonic()
            if self.is_stream and now - asked > self.stall_after_s:
                # FFmpeg's read timeout fired inside grab(); what it hands back now is not a live stream.
                self._set_error("stalled", f"no frame for {now - asked:.1f}s (connection open, no data)")
                self._stalled = True
                break
            if now < self._next_due:
                continue  # above the fps cap: skip without converting the frame
            # Keep to the cap's grid (arrival jitter must not lower the rate); restart it after a gap.
            late = now - self._next_due
            self._next_due = (self._next_due if late < period else now) + period
            ok, image = cap.retrieve()
            if not ok:
                break
            self._deliver(image, now)
            delivered += 1
        return delivered

    def _deliver(self, image, mono: float) -> None:
        frame = Frame(self.camera_id, self._seq, time.time(), image, mono)
        self._seq += 1
        self.frames_read += 1
        self.last_frame_at = mono
        if self.error_reason is not None:
            if self.metrics is not None:
                self.metrics.camera_error.labels(self.camera_id, self.error_reason).set(0)
            self.error_reason = self.last_error = None
        self._set_up(True)
        old = self.slot.put(frame)
        if self.metrics is not None:
            self.metrics.frames.labels(self.camera_id).inc()
        if old is not None:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.frames_dropped.labels(self.camera_id, "stale").inc()
            if self.on_stale is not None:
                self.on_stale(old)
        if self.on_frame is not None:
            self.on_frame()

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            log.info("camera %s %s", self.camera_id, "up" if up else "down")
        self.up = up
        if self.metrics is not None:
            self.metrics.camera_up.labels(self.camera_id).set(1 if up else 0)
