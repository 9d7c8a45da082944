"""Camera capture through GStreamer: hardware decode on a Jetson (NVDEC via `nvv4l2decoder`), software elsewhere.

Chosen per camera in the app config (`capture: {backend: gstreamer, decoder: nvv4l2decoder}`); the OpenCV
reader (app.pipeline.capture) stays the default. This reader is a CameraReader with another source: the same
newest-frame slot, metrics, reconnect with backoff and jitter, file looping and fps cap; only opening and
reading differ.

    stream: rtspsrc (TCP) ! rtph264depay ! h264parse ! DECODER ! videoconvert ! I420 ! appsink
            (Jetson: ... ! nvv4l2decoder ! nvvidconv ! BGRx ! appsink)
    file:   filesrc ! decodebin ! videoconvert ! I420 ! appsink (sync: plays at the file's own rate)

DECODER is `decodebin` by default (it picks the best installed: avdec_h264 from gstreamer1.0-libav, else
openh264dec), `avdec_h264` to insist on FFmpeg's, `nvv4l2decoder` on a Jetson (the NVMM frames it makes are
brought to system memory by nvvidconv, on the VIC engine, not the CPU). The URL is set as a property, never
pasted into the pipeline text, so a camera URL cannot add elements.

Frames: appsink keeps one buffer (max-buffers=1, drop for live streams), so a slow pipeline never queues
stale frames inside GStreamer; frames above the fps cap are dropped before any copy. A sample is read once out
of GStreamer's recycled buffer pool and converted to BGR by OpenCV's SIMD cvtColor straight into the array our
frame slot holds: videoconvert's own I420->BGR costs about 1.5x FFmpeg's (bench/pipeline.py), so videoconvert
only passes through the decoder's I420 (or nvvidconv's BGRx on a Jetson).

Failures, all leading to a reconnect with backoff: no first frame within open_timeout_ms; no new frame within
read_timeout_ms while playing (a stalled server: the pull times out, it never blocks); end of stream (EOS);
an ERROR message on the bus (connection refused or lost, decoder error).

Packages: gstreamer1.0-plugins-base/-good/-bad (rtspsrc, depayloaders, parsers, videoconvert), python3-gi,
gir1.2-gstreamer-1.0 and gir1.2-gst-plugins-base-1.0 (GstVideo); gstreamer1.0-libav for avdec_h264 off a
Jetson; on a Jetson nvidia-l4t-gstreamer (JetPack's apt repository) brings nvv4l2decoder and nvvidconv.
DeepStream is not needed.

GStreamer's Python bindings (python3-gi; JetPack and Debian ship them for the system Python) are not on
PyPI for Debian 12's GLib: when the interpreter cannot import `gi`, the system's dist-packages directory is
appended to sys.path (after our own packages, so nothing of ours is shadowed).
"""

from __future__ import annotations

import logging
import sys
import time

import cv2
import numpy as np

from app.pipeline.capture import CameraReader

log = logging.getLogger(__name__)

SYSTEM_SITE = "/usr/lib/python3/dist-packages"
_gst = None


def gst():
    """The initialised Gst module (imported on first use: the OpenCV path never needs it)."""
    global _gst
    if _gst is None:
        try:
            import gi
        except ImportError:
            if SYSTEM_SITE not in sys.path:
                sys.path.append(SYSTEM_SITE)
            try:
                import gi
            except ImportError as exc:
                raise RuntimeError("GStreamer capture needs python3-gi, gir1.2-gstreamer-1.0 and "
                                   "gir1.2-gst-plugins-base-1.0 (apt-get install them; on a Jetson also "
                                   "nvidia-l4t-gstreamer for nvv4l2decoder and nvvidconv)") from exc
        gi.require_version("Gst", "1.0")
        gi.require_version("GstVideo", "1.0")
        from gi.repository import Gst

        Gst.init(None)
        _gst = Gst
    return _gst


def has_element(name: str) -> bool:
    return gst().ElementFactory.find(name) is not None


def pipeline_description(is_stream: bool, decoder: str = "decodebin", codec: str = "h264", paced: bool = True) -> str:
    """The pipeline text (without the location: set as a property on the element named `src`). Files play at
    their own rate unless `paced` is False (as fast as they decode: benchmarks, batch)."""
    sink = "appsink name=sink max-buffers=1 emit-signals=false"
    if not is_stream:
        return (f"filesrc name=src ! decodebin ! videoconvert ! video/x-raw,format=I420 ! {sink} drop=false "
                f"sync={str(paced).lower()}")
    convert = "nvvidconv ! video/x-raw,format=BGRx" if decoder.startswith("nvv4l2") else \
        "videoconvert ! video/x-raw,format=I420"
    return (f"rtspsrc name=src protocols=tcp latency=100 ! rtp{codec}depay ! {codec}parse ! {decoder} ! "
            f"{convert} ! {sink} drop=true sync=false")


class GstSource:
    """One playing GStreamer pipeline; `pull(timeout_s)` -> (BGR frame | None, why: 'ok' | 'eos' | 'stall' | error)."""

    def __init__(self, description: str, location: str):
        Gst = gst()
        self.pipeline = Gst.parse_launch(description)
        self.pipeline.get_by_name("src").set_property("location", location)
        self.sink = self.pipeline.get_by_name("sink")
        self.bus = self.pipeline.get_bus()
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            self.release()
            raise OSError(f"cannot start {description.split(' ', 1)[0]} for {location}")

    def error(self) -> str | None:
        Gst = gst()
        msg = self.bus.pop_filtered(Gst.MessageType.ERROR)
        if msg is None:
            return None
        err, debug = msg.parse_error()
        return f"{err.message} ({(debug or '').splitlines()[0][:200] if debug else ''})"

    def pull(self, timeout_s: float, convert: bool = True) -> tuple[np.ndarray | None, str]:
        sample = self.sink.emit("try-pull-sample", int(timeout_s * 1e9))
        if sample is None:
            err = self.error()
            if err is not None:
                return None, err
            return None, "eos" if self.sink.get_property("eos") else "stall"
        if not convert:
            return None, "ok"
        return sample_to_array(sample), "ok"

    def release(self) -> None:
        self.pipeline.set_state(gst().State.NULL)


def sample_to_array(sample) -> np.ndarray:
    """A BGR HxWx3 uint8 array of an I420, BGRx or BGR sample (strides and plane offsets from its caps)."""
    Gst = gst()
    from gi.repository import GstVideo

    vi = GstVideo.VideoInfo.new_from_caps(sample.get_caps())
    w, h, fmt = vi.width, vi.height, vi.finfo.format
    buf = sample.get_buffer()
    ok, mapped = buf.map(Gst.MapFlags.READ)
    if not ok:
        raise OSError("cannot map a GStreamer buffer")
    try:
        data = np.frombuffer(mapped.data, np.uint8)  # python-gi hands out bytes: the one copy out of the pool
    finally:
        buf.unmap(mapped)
    stride, offset = vi.stride, vi.offset
    if fmt == GstVideo.VideoFormat.I420:
        w2, h2 = w & ~1, h & ~1  # cvtColor needs even sizes (cameras always are; an odd edge is cropped)
        planes = [data[offset[0] : offset[0] + stride[0] * h].reshape(h, stride[0])[:h2, :w2]]
        for k in (1, 2):
            rows = (h + 1) // 2
            planes.append(data[offset[k] : offset[k] + stride[k] * rows].reshape(rows, stride[k])[: h2 // 2, : w2 // 2])
        if stride[0] == w2 and offset[1] == w2 * h2 and stride[1] == w2 // 2 and offset[2] == offset[1] + w2 * h2 // 4:
            yuv = data[: w2 * h2 * 3 // 2].reshape(h2 * 3 // 2, w2)  # tightly packed: no repacking
        else:
            yuv = np.concatenate([planes[0].ravel(), planes[1].ravel(), planes[2].ravel()]).reshape(h2 * 3 // 2, w2)
        return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)
    rows = data[offset[0] : offset[0] + stride[0] * h].reshape(h, stride[0])
    if fmt in (GstVideo.VideoFormat.BGRX, GstVideo.VideoFormat.BGRA):
        return cv2.cvtColor(rows[:, : w * 4].reshape(h, w, 4), cv2.COLOR_BGRA2BGR)
    if fmt == GstVideo.VideoFormat.BGR:
        return np.ascontiguousarray(rows[:, : w * 3]).reshape(h, w, 3)
    raise OSError(f"unexpected frame format {fmt.value_nick} from the pipeline")


class GstCameraReader(CameraReader):
    """A CameraReader whose frames come from GStreamer (see the module docstring)."""

    def __init__(self, camera_id: str, source: str, *, decoder: str = "decodebin", codec: str = "h264", **kw):
        super().__init__(camera_id, source, **kw)
        self.decoder, self.codec = decoder, codec
        self.description = pipeline_description(self.is_stream, decoder, codec)
        self.last_failure: str | None = None  # why the source was last torn down (eos, stall, an error)
        self._first: np.ndarray | None = None

    def _open(self):
        try:
            src = GstSource(self.description, self.source)
        except Exception as exc:  # a missing element, an unparsable pipeline: reported, retried with backoff
            self.last_failure = str(exc)
            self._set_error("open_failed", str(exc))  # /healthz and edgecv_camera_error say why
            log.warning("camera %s: %s", self.camera_id, exc)
            return None
        image, why = src.pull(self.open_timeout_ms / 1000)
        if image is None:
            self.last_failure = why
            self._set_error("open_failed", f"no first frame within {self.open_timeout_ms} ms ({why})")
            log.warning("camera %s: no first frame within %d ms (%s)", self.camera_id, self.open_timeout_ms, why)
            src.release()
            return None
        self._first = image
        return src

    def _read_until_end(self, src: GstSource) -> int:
        delivered = 0
        period = 1.0 / self.fps if self.fps else 0.0
        image, self._first = self._first, None
        while not self._stop.is_set():
            now = time.monotonic()
            if image is not None:
                late = now - self._next_due
                self._next_due = (self._next_due if late < period else now) + period
                self._deliver(image, now)
                delivered += 1
            # A stalled source answers None after read_timeout_ms; it never blocks us longer.
            capped = period and time.monotonic() < self._next_due
            image, why = src.pull(self.read_timeout_ms / 1000, convert=not capped)
            if why != "ok":
                self.last_failure = why
                if why == "stall":
                    self._set_error("stalled", f"no frame for {self.read_timeout_ms} ms (connection open, no data)")
                    self._stalled = True
                if why != "eos" or self.is_stream:
                    log.warning("camera %s: %s", self.camera_id,
                                f"no frame for {self.read_timeout_ms} ms" if why == "stall" else why)
                break
        return delivered
