"""The MQTT broker flapping (stopped and started three times) and then killed, under the running app.

Bounds: the app notices each outage (edgecv_mqtt_connected 0) within 5 s and reconnects within 10 s of the
broker coming back (reconnect backoff starts at 1 s); SIGTERM exits 0 within the drain bound; every event
the app produced reaches the subscriber by id (re-sends after the broker's crash allowed), none is lost.
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
)

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

DRAIN_S = 6


def test_broker_flapping_then_killed_loses_no_event(tmp_path, triton_server, broker):
    fig: dict = {"detect_s": [], "recover_s": []}
    events = EventLog(broker.port, "flap")
    app = AppProcess(tmp_path, app_config(tmp_path, "flap", triton_server.grpc_url, broker.port, [file_camera()],
                                          drain_timeout_s=DRAIN_S)).start()

    def connected() -> float | None:
        return app.metric("edgecv_mqtt_connected")

    try:
        app.wait_ready()
        wait_for(lambda: len(events.unique()) >= 3, 90, "the first events", log=app.log)
        for k in range(4):
            if k < 3:
                broker.stop()
            else:
                broker.kill()  # a crash: PUBACKs may be lost, so re-sends are allowed from here on
            fig["detect_s"].append(wait_for(lambda: connected() == 0 or not app.alive(), 30, "MQTT seen down",
                                            log=app.log))
            time.sleep(1.5)  # events pile up in the spool meanwhile
            broker.start()
            fig["recover_s"].append(wait_for(lambda: connected() == 1 or not app.alive(), 30, "MQTT back",
                                             log=app.log))
            time.sleep(1.0)
        fig["spool_depth_before_stop"] = app.metric("edgecv_alert_spool_depth")
        fig["rc"], fig["sigterm_s"] = app.sigterm(60)
        measure(lambda: len(events.unique()) >= app.events_produced(), 15)  # every event at the subscriber
        fig.update(ledger(app, events))
        fig["shm_left"] = app.shm_regions()
    finally:
        record("MQTT broker flapping x3 then killed", **fig)
        events.close()
        app.kill()
    assert max(fig["detect_s"]) <= 5 and max(fig["recover_s"]) <= 10, fig
    assert fig["rc"] == 0 and fig["sigterm_s"] <= DRAIN_S + 6
    assert fig["lost"] == 0 and fig["sent"] > 0, fig
    assert fig["shm_left"] == []
