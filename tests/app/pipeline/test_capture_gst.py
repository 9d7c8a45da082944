"""GStreamer capture on real sources: a file (looped, paced), the local RTSP server with a software decoder, and
the faults a camera has (a frozen server: stall; a killed one: end of stream / error; a decoder not installed)."""

from __future__ import annotations

import os
import signal
import threading
import time

import cv2
import numpy as np
import pytest

from app.config import CameraConfig
from app.metrics import Metrics
from app.pipeline.capture_gst import GstCameraReader, has_element, pipeline_description
from fleet.local.rtsp import rtsp_camera


def wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def collect(reader, seconds: float) -> list:
    seen, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        f = reader.take()
        if f is not None:
            seen.append(f)
        time.sleep(0.005)
    return seen


def test_file_plays_in_real_time_and_loops(clip):
    reader = GstCameraReader("file", str(clip), is_stream=False).start()
    try:
        seen = collect(reader, 1.0)
        assert reader.up
    finally:
        reader.stop()
    assert 25 <= len(seen) <= 60, len(seen)  # 50 fps for one second: the 20-frame clip looped
    assert seen[0].image.shape == (48, 64, 3) and seen[0].image.dtype == np.uint8
    values = [int(f.image[24, 32, 0]) for f in seen]
    assert any(b < a for a, b in zip(values, values[1:], strict=False)), "the clip never started over"


def test_a_decoder_that_is_not_installed_is_reported_and_retried():
    assert not has_element("nvv4l2decoder")  # no Jetson here
    reader = GstCameraReader("jetson", "rtsp://127.0.0.1:9/cam", is_stream=True, decoder="nvv4l2decoder",
                             backoff_base_s=0.05, backoff_max_s=0.1).start()
    try:
        assert wait_for(lambda: reader.reconnects >= 2, 5)
    finally:
        reader.stop()
    assert "nvv4l2decoder" in reader.last_failure and not reader.up


def test_pipeline_text_never_contains_the_url_and_uses_nvvidconv_after_nvdec():
    text = pipeline_description(True, "nvv4l2decoder")
    assert "rtspsrc name=src" in text and "nvv4l2decoder ! nvvidconv" in text and "location" not in text
    assert "avdec_h264 ! videoconvert" in pipeline_description(True, "avdec_h264")
    with pytest.raises(ValueError, match="decoder"):
        CameraConfig(id="c", url="rtsp://x/y", capture={"backend": "gstreamer", "decoder": "x ! filesrc"})


@pytest.fixture(scope="module")
def camera():
    cam = rtsp_camera(fps=15, width=320, height=240)
    try:
        yield cam.start()
    finally:
        cam.stop()


@pytest.mark.integration
@pytest.mark.parametrize("decoder", ["avdec_h264", "decodebin"])
def test_rtsp_with_a_software_decoder(camera, decoder):
    if not has_element(decoder.replace("decodebin", "avdec_h264")):
        pytest.fail("avdec_h264 missing: apt-get install gstreamer1.0-libav (Makefile APT_PACKAGES)")
    metrics = Metrics()
    woke = threading.Event()
    reader = GstCameraReader("gate", camera.url, is_stream=True, decoder=decoder, metrics=metrics,
                             on_frame=woke.set).start()
    try:
        assert wait_for(lambda: reader.frames_read >= 10, 20), reader.last_failure
        f = reader.take() or (woke.wait(2) and reader.take())
        assert f.image.shape == (240, 320, 3) and reader.up
        assert f.image.std() > 5  # a picture, not a blank frame
    finally:
        reader.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_frozen_and_killed_servers_are_detected_and_recovered(camera):
    reader = GstCameraReader("gate", camera.url, is_stream=True, read_timeout_ms=800, backoff_base_s=0.1,
                             backoff_max_s=0.5).start()
    try:
        assert wait_for(lambda: reader.frames_read >= 5, 20), reader.last_failure
        os.killpg(camera.proc.pid, signal.SIGSTOP)  # frozen: the socket stays open, nothing arrives
        try:
            t0 = time.monotonic()
            assert wait_for(lambda: reader.reconnects >= 1, 5)
            assert time.monotonic() - t0 < 3 and reader.last_failure == "stall"
            assert not reader.up
        finally:
            os.killpg(camera.proc.pid, signal.SIGCONT)
        n = reader.frames_read
        assert wait_for(lambda: reader.frames_read > n + 5, 20), reader.last_failure  # reconnected
        camera.kill()  # gone: connection closed
        try:
            k = reader.reconnects
            assert wait_for(lambda: reader.reconnects > k, 10)
            assert reader.last_failure and not reader.up  # why it went down is kept (eos, stall or the error)
        finally:
            camera.start()
        n = reader.frames_read
        assert wait_for(lambda: reader.frames_read > n + 5, 30), reader.last_failure
    finally:
        reader.stop()


def test_the_app_config_picks_the_reader_per_camera():
    from app.pipeline.capture import CameraReader
    from app.runner import _reader

    jetson = _reader(CameraConfig(id="a", url="rtsp://x/y", capture={"backend": "gstreamer", "decoder": "nvv4l2decoder"}))
    assert jetson.func is GstCameraReader and jetson.keywords == {"decoder": "nvv4l2decoder", "codec": "h264"}
    assert _reader(CameraConfig(id="b", url="rtsp://x/y")) is CameraReader


@pytest.mark.parametrize("w,h", [(64, 48), (70, 48), (66, 50)])  # tight, padded rows, padded chroma rows
def test_i420_and_bgrx_samples_become_the_same_bgr_frame(w, h):
    from app.pipeline.capture_gst import gst, sample_to_array

    Gst = gst()
    from gi.repository import GstVideo

    bgr = np.random.default_rng(w).integers(0, 255, (h, w, 3), dtype=np.uint8)
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)  # tightly packed planes: Y (h, w), U, V (h/2, w/2)
    caps = Gst.Caps.from_string(f"video/x-raw,format=I420,width={w},height={h}")
    vi = GstVideo.VideoInfo.new_from_caps(caps)
    data = np.zeros(vi.size, np.uint8)  # GStreamer's own layout: rows padded to 4 bytes
    planes = [yuv[:h], yuv[h:].reshape(-1)[: h * w // 4].reshape(h // 2, w // 2),
              yuv[h:].reshape(-1)[h * w // 4 :].reshape(h // 2, w // 2)]
    for k, plane in enumerate(planes):
        rows = data[vi.offset[k] : vi.offset[k] + vi.stride[k] * plane.shape[0]].reshape(plane.shape[0], -1)
        rows[:, : plane.shape[1]] = plane
    got = sample_to_array(Gst.Sample.new(Gst.Buffer.new_wrapped(data.tobytes()), caps, None, None))
    np.testing.assert_array_equal(got, cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420))
    bgrx = np.concatenate([bgr, np.zeros((h, w, 1), np.uint8)], axis=2)
    caps = Gst.Caps.from_string(f"video/x-raw,format=BGRx,width={w},height={h}")
    got = sample_to_array(Gst.Sample.new(Gst.Buffer.new_wrapped(bgrx.tobytes()), caps, None, None))
    np.testing.assert_array_equal(got, bgr)
