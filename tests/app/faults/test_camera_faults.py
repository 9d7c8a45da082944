"""Camera faults under the running app: an RTSP stream frozen with its connection held open (our TCP proxy
between the app and the real RTSP server), the RTSP server killed and restarted on its port, SIGTERM while
the stream is frozen. A second camera (a file) must keep flowing throughout.

Bounds: a frozen stream is marked down, with reason "stalled", within read_timeout + 1.5 s (the frame-age
watchdog; OpenCV alone took three read timeouts); a killed server within read_timeout + 2 s with a reason;
recovery within 25 s of the stream coming back (reconnect backoff is capped at 10 s); SIGTERM exits 0 within
the drain bound; no event lost, none duplicated.
"""

from __future__ import annotations

import time

import pytest

from fleet.local.rtsp import rtsp_camera
from tests.support.fault_harness import (
    AppProcess,
    EventLog,
    app_config,
    file_camera,
    ledger,
    measure,
    record,
    rtsp_camera_config,
    video,
    wait_for,
    within,
)
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

READ_S, DRAIN_S = 2.0, 6


def camera_down_because(app: AppProcess, reason: str | None = None) -> str | None:
    if app.metric("edgecv_camera_up", camera="rtsp") != 0:
        return None
    err = app.health()[1].get("camera_errors", {}).get("rtsp") or "(no reason given)"
    return err if reason is None or err.startswith(reason) else None


def test_frozen_and_killed_camera_are_detected_with_a_reason_and_recovered(tmp_path, triton_server, broker):
    fig: dict = {}
    cam = rtsp_camera(video(), fps=8, width=768, height=576)
    cam.start()
    proxy = TcpProxy(cam.port).start()
    url = f"rtsp://127.0.0.1:{proxy.port}{cam.path}"
    cfg = app_config(tmp_path, "cams", triton_server.grpc_url, broker.port,
                     [rtsp_camera_config("rtsp", url, timeout_ms=int(READ_S * 1000)), file_camera("file")],
                     drain_timeout_s=DRAIN_S)
    events = EventLog(broker.port, "cams")
    app = AppProcess(tmp_path, cfg).start()
    try:
        app.wait_ready()
        wait_for(lambda: app.metric("edgecv_camera_up", camera="rtsp") == 1, 60, "rtsp camera up", log=app.log)

        # 1. Frozen stream, connection held open.
        proxy.freeze()
        file_before = app.metric("edgecv_frames_processed_total", camera="file")
        fig["stall_detect_s"] = measure(lambda: camera_down_because(app), 30)
        fig["stall_reason"] = camera_down_because(app)
        fig["health_while_stalled"] = app.health()[1].get("status")
        time.sleep(2)
        fig["file_frames_during_stall"] = app.metric("edgecv_frames_processed_total", camera="file") - file_before
        proxy.thaw()
        fig["stall_recover_s"] = measure(lambda: app.metric("edgecv_camera_up", camera="rtsp") == 1, 60)

        # 2. Camera server killed, restarted on the same port.
        cam.kill()
        fig["kill_detect_s"] = measure(lambda: camera_down_because(app), 30)
        time.sleep(1.5)
        fig["kill_reason"] = camera_down_because(app)
        cam.start()
        fig["kill_recover_s"] = measure(lambda: app.metric("edgecv_camera_up", camera="rtsp") == 1, 60)
        measure(lambda: len(events.unique()) >= 3, 60)

        # 3. SIGTERM while the stream is frozen.
        proxy.freeze()
        time.sleep(1.0)
        fig["dead_threads"] = app.health()[1].get("dead_threads")
        fig["rc"], fig["sigterm_s"] = app.sigterm(60)
        time.sleep(1.0)
        fig.update(ledger(app, events))
        fig["shm_left"] = app.shm_regions()
    finally:
        record("camera: RTSP frozen (proxy), server killed/restarted, SIGTERM while frozen", **fig)
        events.close()
        app.kill()
        proxy.close()
        cam.stop()
    assert within(fig["stall_detect_s"], READ_S + 1.5), fig
    assert (fig["stall_reason"] or "").startswith("stalled"), fig
    assert fig["health_while_stalled"] == "degraded" and fig["file_frames_during_stall"] >= 4
    assert within(fig["stall_recover_s"], 25)
    assert within(fig["kill_detect_s"], READ_S + 2) and fig["kill_reason"] != "(no reason given)", fig
    assert within(fig["kill_recover_s"], 25)
    assert fig["dead_threads"] == []
    assert fig["rc"] == 0 and fig["sigterm_s"] <= DRAIN_S + 6, fig
    assert fig["lost"] == 0 and fig["duplicates"] == 0, fig
    assert fig["shm_left"] == []
