"""Camera readers on real sources: a video file (looped, paced, capped), and RTSP endpoints that refuse or stall."""

import socket
import threading
import time

import numpy as np

from app.metrics import Metrics
from app.pipeline.capture import CameraReader, FrameSlot, backoff_delay
from app.pipeline.types import Frame
from fleet.local.procs import free_port


def frame(seq: int) -> Frame:
    return Frame("cam", seq, time.time(), np.zeros((2, 2, 3), np.uint8), time.monotonic())


def test_slot_keeps_only_the_newest_frame():
    slot = FrameSlot()
    assert slot.take() is None
    assert slot.put(frame(0)) is None
    dropped = slot.put(frame(1))
    assert dropped.seq == 0
    assert slot.put(frame(2)).seq == 1
    assert slot.take().seq == 2 and slot.take() is None


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    for attempt, nominal in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 8.0)):
        delays = [backoff_delay(attempt, 0.5, 8.0) for _ in range(200)]
        assert min(delays) >= nominal * 0.5 and max(delays) <= nominal
        assert max(delays) - min(delays) > nominal * 0.2  # jittered, not lock-step


def wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_file_plays_in_real_time_and_loops(clip):
    metrics = Metrics()
    woke = threading.Event()
    reader = CameraReader("file", str(clip), is_stream=False, metrics=metrics, on_frame=woke.set).start()
    try:
        seen = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            if woke.wait(0.2):
                woke.clear()
                f = reader.take()
                if f is not None:
                    seen.append(f)
        assert reader.up
    finally:
        reader.stop()
    assert not reader.up
    # 50 fps for one second: about 50 frames, i.e. the 20-frame clip looped twice and more.
    assert 25 <= len(seen) <= 60, len(seen)
    values = [int(f.image[24, 32, 0]) for f in seen]
    assert any(b < a for a, b in zip(values, values[1:], strict=False)), "the clip never started over"
    assert [f.seq for f in seen] == sorted(f.seq for f in seen)
    assert seen[0].image.shape == (48, 64, 3)
    assert reader.reconnects == 0  # looping is not a reconnect
    assert metrics.frames.labels("file")._value.get() == reader.frames_read


def test_fps_cap_and_stale_frames_counted(clip):
    metrics = Metrics()
    reader = CameraReader("capped", str(clip), is_stream=False, fps=10, metrics=metrics).start()
    try:
        time.sleep(1.05)  # nobody takes frames: every one but the newest goes stale
    finally:
        reader.stop()
    assert 8 <= reader.frames_read <= 13, reader.frames_read  # 10 fps, not the file's 50
    assert reader.dropped == reader.frames_read - 1
    assert metrics.frames_dropped.labels("capped", "stale")._value.get() == reader.dropped
    assert metrics.camera_target_fps.labels("capped")._value.get() == 10


def test_refused_stream_reconnects_with_backoff():
    metrics = Metrics()
    url = f"rtsp://127.0.0.1:{free_port()}/nothing-here"
    reader = CameraReader("gone", url, is_stream=True, backoff_base_s=0.05, backoff_max_s=0.2, metrics=metrics)
    reader.start()
    try:
        assert wait_for(lambda: reader.reconnects >= 4, 10)
        assert not reader.up and reader.take() is None
    finally:
        reader.stop()
    assert metrics.camera_reconnects.labels("gone")._value.get() == reader.reconnects
    assert metrics.camera_up.labels("gone")._value.get() == 0


def test_missing_file_does_not_crash_the_reader(tmp_path):
    reader = CameraReader("nofile", str(tmp_path / "missing.avi"), is_stream=False, backoff_base_s=0.05,
                          backoff_max_s=0.1).start()
    try:
        assert wait_for(lambda: reader.reconnects >= 2, 5)
    finally:
        reader.stop()


def test_stalled_server_is_abandoned_after_the_open_timeout():
    """A server that accepts the connection and never answers: without the timeout OpenCV waits 90 s and more."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                pass

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    url = f"rtsp://127.0.0.1:{server.getsockname()[1]}/stalled"
    reader = CameraReader("stalled", url, is_stream=True, open_timeout_ms=500, read_timeout_ms=500,
                          backoff_base_s=0.05, backoff_max_s=0.1)
    t0 = time.monotonic()
    reader.start()
    try:
        assert wait_for(lambda: reader.reconnects >= 1, 10), "open() never gave up"
        assert time.monotonic() - t0 < 5
        assert len(held) >= 1  # it really connected to the stalled server
    finally:
        stop.set()
        t1 = time.monotonic()
        reader.stop()
        assert time.monotonic() - t1 < 3  # stop() is not stuck behind a read
        acceptor.join(2)
        for s in held:
            s.close()
        server.close()
