"""Triton frozen (SIGSTOP) and killed mid-request (SIGKILL) under the running app, on the session's Triton.

Bounds: a frozen or dead Triton is seen (readyz 503, edgecv_triton_up 0) within request + control deadline
+ 3 s; the app recovers by itself within 15 s of Triton answering again; SIGTERM with Triton frozen exits 0
within drain_timeout_s + 6 s with every event delivered; start-up against a frozen Triton gives up after
ready_timeout_s (+ deadlines and interpreter start); no /dev/shm region of the app survives its exit.
"""

from __future__ import annotations

import time

import pytest

from tests.support.fault_harness import (
    AppProcess,
    EventLog,
    app_config,
    file_camera,
    ledger,
    measure,
    record,
    wait_for,
    within,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

REQUEST_S, CONTROL_S, DRAIN_S = 2, 2, 6
DETECT_S = REQUEST_S + CONTROL_S + 3


def config(tmp_path, device, triton_server, broker, **extra):
    cfg = app_config(tmp_path, device, triton_server.grpc_url, broker.port, [file_camera()],
                     drain_timeout_s=DRAIN_S, **extra)
    cfg["triton"].update(request_timeout_s=REQUEST_S, control_timeout_s=CONTROL_S)
    return cfg


def triton_down(app: AppProcess) -> bool:
    return app.metric("edgecv_triton_up") == 0 or not app.alive()


def test_frozen_triton_is_detected_recovered_and_does_not_hold_shutdown(tmp_path, triton_server, frozen_triton,
                                                                       broker):
    fig: dict = {}
    events = EventLog(broker.port, "tri-stop")
    app = AppProcess(tmp_path, config(tmp_path, "tri-stop", triton_server, broker)).start()
    try:
        app.wait_ready()
        wait_for(lambda: len(events.unique()) >= 3, 90, "the first events", log=app.log)
        frozen_triton.freeze()
        fig["detect_s"] = measure(lambda: triton_down(app), 60)
        frozen_triton.thaw()
        fig["recover_s"] = measure(app.ready, 60)
        processed = app.metric("edgecv_frames_processed_total") or 0
        fig["frames_flow_again_s"] = measure(
            lambda: (app.metric("edgecv_frames_processed_total") or 0) > processed + 5, 30)
        fig["inflight_max"] = app.metric("edgecv_inference_inflight")
        # The app's recovery must not take Triton down (re-registering shared memory a late request still
        # reads did: a segfault in Triton's Python backend).
        fig["triton_survived"] = triton_server.proc.poll() is None
        if fig["frames_flow_again_s"] is None:  # say why in the failure: health, then the app's log tail
            fig["healthz"], fig["log"] = app.health(), app.log(4000)
        frozen_triton.freeze()  # and now stop the app while Triton hangs
        measure(lambda: triton_down(app), 60)
        fig["rc"], fig["sigterm_s"] = app.sigterm(150)
        frozen_triton.thaw()
        time.sleep(1.0)
        fig.update(ledger(app, events))
        fig["shm_left"] = app.shm_regions()
    finally:
        frozen_triton.thaw()
        record("triton SIGSTOP (+ SIGTERM while frozen)", **fig)
        events.close()
        app.kill()
    assert within(fig["detect_s"], DETECT_S)
    assert fig["triton_survived"], fig
    assert within(fig["recover_s"], 15) and within(fig["frames_flow_again_s"], 15), fig
    assert fig["rc"] == 0 and fig["sigterm_s"] <= DRAIN_S + 6, fig
    assert fig["lost"] == 0 and fig["duplicates"] == 0 and fig["sent"] > 0, fig
    assert fig["shm_left"] == []


def test_startup_against_a_frozen_triton_gives_up_after_its_ready_timeout(tmp_path, triton_server, frozen_triton,
                                                                           broker):
    fig: dict = {}
    cfg = config(tmp_path, "tri-start", triton_server, broker)
    cfg["triton"]["ready_timeout_s"] = 3
    frozen_triton.freeze()
    app = AppProcess(tmp_path, cfg)
    try:
        app.start()
        try:
            fig["rc"] = app.proc.wait(120)
        except Exception:
            fig["rc"] = None
        fig["exit_s"] = time.monotonic() - app.started_at
        fig["shm_left"] = app.shm_regions()
    finally:
        frozen_triton.thaw()
        record("start-up with Triton frozen (ready_timeout_s 3)", **fig)
        app.kill()
    assert fig["rc"] == 3, app.log()
    # Interpreter start and imports take a few seconds on a busy 2-core box; Triton's share is 3 s + deadlines.
    assert fig["exit_s"] <= 3 + 2 * CONTROL_S + 15, fig
    assert fig["shm_left"] == []


def test_triton_killed_mid_request_recovers_without_an_app_restart(tmp_path, triton_server, broker):
    fig: dict = {}
    events = EventLog(broker.port, "tri-kill")
    app = AppProcess(tmp_path, config(tmp_path, "tri-kill", triton_server, broker)).start()
    try:
        app.wait_ready()
        wait_for(lambda: len(events.unique()) >= 3, 90, "the first events", log=app.log)
        starts = app.metric("edgecv_app_starts_total")
        measure(lambda: (app.metric("edgecv_inference_inflight") or 0) > 0, 10, every=0.01)  # kill mid-request
        triton_server.kill()
        fig["detect_s"] = measure(lambda: triton_down(app), 60)
        t0 = time.monotonic()
        triton_server.start()
        fig["triton_restart_s"] = time.monotonic() - t0
        fig["recover_s"] = measure(app.ready, 60)
        processed = app.metric("edgecv_frames_processed_total") or 0
        fig["frames_flow_again_s"] = measure(
            lambda: (app.metric("edgecv_frames_processed_total") or 0) > processed + 5, 30)
        fig["same_process"] = app.metric("edgecv_app_starts_total") == starts
        fig["rc"], fig["sigterm_s"] = app.sigterm(60)
        time.sleep(1.0)
        fig.update(ledger(app, events))
        fig["shm_left"] = app.shm_regions()
    finally:
        triton_server.start()  # the session's Triton must be up for the next test
        record("triton SIGKILL mid-request", **fig)
        events.close()
        app.kill()
    assert within(fig["detect_s"], DETECT_S)
    assert within(fig["recover_s"], 15) and within(fig["frames_flow_again_s"], 15) and fig["same_process"]
    assert fig["rc"] == 0 and fig["sigterm_s"] <= DRAIN_S + 6
    assert fig["lost"] == 0 and fig["duplicates"] == 0, fig
    assert fig["shm_left"] == []


def test_inflight_gauge_counts_requests_on_the_wire_not_queued_ones(tmp_path, triton_server, frozen_triton,
                                                                   nanodet_manifest):
    from app.metrics import Metrics
    from app.pipeline.infer import TritonInfer

    metrics = Metrics()
    infer = TritonInfer(nanodet_manifest, triton_server.grpc_url, max_batch=1, max_inflight=2,
                        shared_memory=True, request_timeout_s=3, control_timeout_s=2, metrics=metrics)
    infer.start(30)
    try:
        frozen_triton.freeze()
        for _ in range(3):  # max_inflight + 1 buffers: the third waits for a worker
            infer.submit(infer.acquire(), 1)
        time.sleep(0.5)
        assert metrics.inflight._value.get() == 2
        assert metrics.inference_queued._value.get() == 1
        frozen_triton.thaw()
        wait_for(lambda: infer.inflight == 0, 30, "requests done")
        assert metrics.inflight._value.get() == 0
    finally:
        frozen_triton.thaw()
        t0 = time.monotonic()
        infer.close(5)
        assert time.monotonic() - t0 < 10
