"""A full file system under the running app: the spool's, then the spool's and evidence's together.

Faults are real: a small tmpfs is mounted for the app's data and a filler file takes its last byte.
Bounds: the full disk is reported by /healthz within 10 s (it is noticed at the next write); the app keeps
running and publishing from memory meanwhile; /healthz is clear again within 10 s of space coming back;
SIGTERM exits 0 within the drain bound; no event is lost, none duplicated (no crash), no /dev/shm region left.
"""

from __future__ import annotations

import time

import pytest

from tests.app.faults.conftest import BUCKET
from tests.support.fault_harness import (
    AppProcess,
    EventLog,
    app_config,
    file_camera,
    fill,
    ledger,
    measure,
    record,
    small_fs,
    wait_for,
    within,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

DETECT_S, RECOVER_S, DRAIN_S = 10, 10, 8


def disk_full(app: AppProcess, what: str) -> bool:
    return what in app.health()[1].get("disk_full", [])


def test_full_spool_disk_keeps_the_pipeline_running_and_loses_nothing(tmp_path, triton_server, broker):
    """Full while running, SIGTERM and a restart on the still-full disk (it used to crash-loop), then room."""
    fig: dict = {}
    with small_fs(tmp_path / "data", 4) as data:
        cfg = app_config(tmp_path, "spool-full", triton_server.grpc_url, broker.port, [file_camera()],
                         spool_dir=str(data / "spool"), drain_timeout_s=DRAIN_S)
        events = EventLog(broker.port, "spool-full")
        first = app = AppProcess(tmp_path, cfg).start()
        try:
            app.wait_ready()
            wait_for(lambda: len(events.unique()) >= 3, 90, "the first events", log=app.log)
            filler = fill(data)
            fig["detect_s"] = measure(lambda: disk_full(app, "spool") or not app.alive(), DETECT_S + 20)
            fig.update(hold_full(app, events, 8))
            if app.alive():
                fig["rc_on_full_disk"], fig["sigterm_on_full_disk_s"] = app.sigterm(60)
            # Restarted on the still-full disk: it must come up and stay up, publishing from memory.
            app = AppProcess(tmp_path, cfg, run=2).start()
            app.wait_ready()
            fig["restart"] = hold_full(app, events, 8)
            filler.unlink()
            if app.alive():
                fig["recover_s"] = measure(lambda: not disk_full(app, "spool"), RECOVER_S)
                received = len(events.unique())
                measure(lambda: len(events.unique()) > received, 30)
                fig["dead_threads"] = app.health()[1].get("dead_threads")
                fig["rc"], fig["sigterm_s"] = app.sigterm(60)
            time.sleep(1.0)  # the last PUBACKed messages reach our subscriber
            fig.update(ledger(app, events, earlier=(first,)))
            fig["shm_left"] = first.shm_regions() + app.shm_regions()
        finally:
            record("spool disk full (+ SIGTERM and restart on the full disk)", **fig)
            events.close()
            first.kill()
            app.kill()
    assert fig["alive_on_full_disk"], f"the app died on a full disk (exit {fig['exit_code_on_full_disk']})"
    assert within(fig["detect_s"], DETECT_S)
    assert fig["received_while_full"] > 0, "alerts must still be published (from memory) while the disk is full"
    assert fig["rc_on_full_disk"] == 0 and fig["sigterm_on_full_disk_s"] <= DRAIN_S + 6
    assert fig["restart"]["alive_on_full_disk"] and fig["restart"]["received_while_full"] > 0, fig
    assert within(fig["recover_s"], RECOVER_S)
    assert fig["dead_threads"] == []
    assert fig["rc"] == 0 and fig["sigterm_s"] <= DRAIN_S + 6
    assert fig["lost"] == 0 and fig["duplicates"] == 0 and fig["sent"] > 0, fig
    assert fig["shm_left"] == []


def hold_full(app: AppProcess, events: EventLog, seconds: float) -> dict:
    """Keep watching the app for `seconds` on the full disk: does it live, do alerts still get out?"""
    received = len(events.unique())
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds and app.alive():
        app.metric("edgecv_events_total")
        time.sleep(0.5)
    return {"alive_on_full_disk": app.alive(), "exit_code_on_full_disk": app.proc.poll(),
            "received_while_full": len(events.unique()) - received}


def test_full_data_disk_sheds_evidence_for_alerts_and_counts_refusals(tmp_path, triton_server, broker, s3):
    """Spool and evidence on one small disk, as on a device: the free-space floor refuses evidence before the
    disk fills (uploaded packages deleted first); on a full disk evidence is shed so alerts are written."""
    client, s3_url = s3
    fig: dict = {}
    with small_fs(tmp_path / "data", 48) as data:
        cfg = app_config(
            tmp_path, "data-full", triton_server.grpc_url, broker.port, [file_camera()],
            spool_dir=str(data / "spool"), drain_timeout_s=DRAIN_S,
            evidence={"dir": str(data / "evidence"), "pre_roll_s": 1.0, "post_roll_s": 1.0, "jpeg_quality": 50,
                      "min_free_bytes": 12 << 20, "min_free_percent": 0,
                      "store": {"bucket": BUCKET, "endpoint_url": s3_url, "upload_interval_s": 0.5,
                                "shutdown_upload_s": 5}},
        )
        events = EventLog(broker.port, "data-full")
        app = AppProcess(tmp_path, cfg).start()

        def refused(reason: str | None = None) -> float:
            return app.metric("edgecv_evidence_refused_total", **({"reason": reason} if reason else {})) or 0.0

        try:
            app.wait_ready()
            wait_for(lambda: (app.metric("edgecv_evidence_uploaded_total") or 0) >= 2, 90, "evidence uploaded",
                     log=app.log)
            # Below the floor, above zero: retention must refuse new evidence (and say why).
            floor_filler = fill(data, leave_bytes=6 << 20)
            before = refused()
            fig["floor_detect_s"] = measure(lambda: refused() > before or not app.alive(), 30)
            fig["refused_free_space"] = refused("free_space")
            # Now really full: the spool must still take alerts (evidence shed) or hold them in memory.
            received = len(events.unique())
            full_filler = fill(data)
            t_full = time.monotonic()
            while time.monotonic() - t_full < 8 and app.alive():
                app.metric("edgecv_events_total")
                time.sleep(0.5)
            fig["alive_on_full_disk"] = app.alive()
            fig["received_while_full"] = len(events.unique()) - received
            fig["dead_threads_while_full"] = app.health()[1].get("dead_threads")
            full_filler.unlink()
            floor_filler.unlink()
            if app.alive():
                written = app.metric("edgecv_evidence_written_total")
                fig["recover_s"] = measure(lambda: app.metric("edgecv_evidence_written_total") > written, 30)
                fig["refused_by_reason"] = {r: refused(r) for r in ("budget", "free_space", "disk_full",
                                                                    "write_failed", "shed")}
                fig["refused_total"] = refused()
                fig["rc"], fig["sigterm_s"] = app.sigterm(60)
            time.sleep(1.0)
            fig.update(ledger(app, events))
            fig["evidence_written"] = app.summary().get("evidence", {}).get("written") if app.summary() else None
            listing = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
            fig["evidence_uploaded"] = len({o["Key"].split("/")[2] for o in listing if o["Key"].endswith("event.json")})
            fig["evidence_errors_logged"] = app.log(10**7).count("evidence for ")
            fig["shm_left"] = app.shm_regions()
        finally:
            record("evidence + spool disk full", **fig)
            events.close()
            app.kill()
    assert within(fig["floor_detect_s"], 20) and fig["refused_free_space"] > 0, fig
    assert fig["alive_on_full_disk"] and fig["received_while_full"] > 0, fig
    assert fig["dead_threads_while_full"] == []
    assert within(fig["recover_s"], 30)
    assert fig["rc"] == 0 and fig["sigterm_s"] <= DRAIN_S + 6
    assert fig["lost"] == 0 and fig["duplicates"] == 0, fig
    assert fig["evidence_uploaded"] > 0 and fig["shm_left"] == []
