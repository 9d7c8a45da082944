"""Alerts through a real mosquitto: broker outages and a publisher crash lose nothing and keep the order."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from app.alerts.publisher import AlertPublisher
from app.metrics import Metrics
from app.pipeline.rules import uuid7
from app.pipeline.types import Event
from fleet.local.mosquitto import mosquitto
from fleet.local.procs import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SITE, DEVICE = "site-a", "jetson-01"


@pytest.fixture
def broker():
    # The subscriber below keeps a persistent session, so the broker must keep it across its own restart.
    svc = mosquitto(persistence=True)
    try:
        yield svc.start()
    finally:
        svc.stop()
        shutil.rmtree(svc.workdir, ignore_errors=True)


class Subscriber:
    """A QoS 1 consumer with a persistent session (what a site's alert consumer should be)."""

    def __init__(self, port: int):
        self.messages: list[tuple[str, dict]] = []
        self.cv = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-consumer", clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("edgecv/#", qos=1)
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client, userdata, msg):
        with self.cv:
            self.messages.append((msg.topic, json.loads(msg.payload)))
            self.cv.notify_all()

    def wait_unique(self, n: int, timeout: float = 20) -> list[str]:
        """Ids of the first n distinct messages, in arrival order (de-duplicated by id, as consumers do)."""
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.unique()) >= n, timeout), f"got {len(self.unique())} of {n}"
            return self.unique()

    def unique(self) -> list[str]:
        seen: dict[str, None] = {}
        for _, p in self.messages:
            seen.setdefault(p["event_id"], None)
        return list(seen)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def event(k: int, camera: str = "cam-1") -> Event:
    t = time.time()
    return Event(uuid7(t), t, SITE, DEVICE, camera, "dock-in", "zone_intrusion", "person", 0.9, (1, 2, 3, 4), k, "m@1")


def publisher(port: int, spool_dir, **kw) -> AlertPublisher:
    return AlertPublisher("127.0.0.1", port, SITE, DEVICE, spool_dir, reconnect_min_s=0.1, reconnect_max_s=0.5, **kw)


def wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_broker_outage_mid_stream_loses_nothing_and_keeps_order(broker, tmp_path):
    sub = Subscriber(broker.port)
    metrics = Metrics()
    sent: list[str] = []
    try:
        with publisher(broker.port, tmp_path / "spool", metrics=metrics) as pub:
            wait(lambda: pub.connected)
            for k in range(30):
                e = event(k, camera=f"cam-{k % 2}")
                pub.publish_event(e)
                sent.append(e.event_id)
            drift = {"event_id": uuid7(time.time()), "kind": "drift", "psi": 0.31}
            pub.publish("drift", drift)
            sent.append(drift["event_id"])
            burst = [event(k) for k in range(30, 40)]
            pub.publish_events(burst)  # some of these are in flight when the broker goes
            sent += [e.event_id for e in burst]
            broker.stop()
            wait(lambda: not pub.connected)
            for k in range(40, 70):  # the broker is away: these can only go to disk
                e = event(k)
                pub.publish_event(e)
                sent.append(e.event_id)
            assert pub.pending >= 30
            assert metrics.registry.get_sample_value("edgecv_mqtt_connected") == 0
            assert metrics.registry.get_sample_value("edgecv_alert_spool_depth") == pub.pending
            broker.start()  # same port
            for k in range(70, 100):
                e = event(k)
                pub.publish_event(e)
                sent.append(e.event_id)
            assert pub.wait_flushed(20), f"{pub.pending} still spooled"
            assert metrics.registry.get_sample_value("edgecv_alert_spool_depth") == 0
            assert metrics.registry.get_sample_value("edgecv_alerts_published_total") >= len(sent)
            assert metrics.registry.get_sample_value("edgecv_mqtt_connected") == 1
        assert sub.wait_unique(len(sent)) == sent
        topics = {p["event_id"]: topic for topic, p in sub.messages}
        assert topics[sent[0]] == f"edgecv/{SITE}/{DEVICE}/cam-0/events"
        assert topics[sent[1]] == f"edgecv/{SITE}/{DEVICE}/cam-1/events"
        assert topics[drift["event_id"]] == f"edgecv/{SITE}/{DEVICE}/drift"
        first = next(p for _, p in sub.messages if p["event_id"] == sent[0])
        assert first["schema"] == 1 and first["camera"] == "cam-0" and first["track_id"] == 0
    finally:
        sub.close()


CRASHING_PUBLISHER = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from app.alerts.publisher import AlertPublisher
from tests.app.alerts.test_publisher_mqtt import event
pub = AlertPublisher("127.0.0.1", {dead_port}, "site-a", "jetson-01", {spool!r}, reconnect_min_s=0.1).start()
for k in range(25):
    e = event(k)
    pub.publish_event(e)
    print(e.event_id, flush=True)
print("spooled", flush=True)
time.sleep(60)  # killed before this ends
"""


def test_publisher_crash_restart_flushes_the_spool_in_order(broker, tmp_path, repo_root):
    sub = Subscriber(broker.port)
    spool = tmp_path / "spool"
    script = CRASHING_PUBLISHER.format(root=str(repo_root), dead_port=free_port(), spool=str(spool))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline().strip() for _ in range(26)]
        assert lines[-1] == "spooled", lines
        proc.send_signal(signal.SIGKILL)  # a crash: nothing closed, nothing flushed
        proc.wait(10)
        sent = lines[:-1]
        with publisher(broker.port, spool) as pub:  # the app restarted, now with the broker reachable
            assert pub.pending == 25
            assert pub.wait_flushed(20)
        assert sub.wait_unique(25) == sent
    finally:
        proc.kill()
        proc.wait(10)
        sub.close()


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="reconnect_min_s"):
        AlertPublisher("127.0.0.1", 1, SITE, DEVICE, tmp_path, reconnect_min_s=0)


def test_bad_topic_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="site_id 'a/b'"):
        AlertPublisher("127.0.0.1", 1, "a/b", DEVICE, tmp_path)
    pub = AlertPublisher("127.0.0.1", 1, SITE, DEVICE, tmp_path / "s")
    try:
        with pytest.raises(ValueError, match="camera_id 'cam#1'"):
            pub.publish_event(event(0, camera="cam#1"))
        assert pub.pending == 0
    finally:
        pub.close()


def test_messages_in_flight_when_the_broker_dies_are_resent_before_newer_ones(broker, tmp_path):
    sub = Subscriber(broker.port)
    db = broker.workdir / "mosquitto.db"
    os.kill(broker.proc.pid, signal.SIGUSR1)  # save the consumer's session now: a SIGKILLed broker cannot
    wait(db.exists)
    pub = publisher(broker.port, tmp_path / "spool")
    on_connect = pub.client.on_connect

    def slow_on_connect(*args):  # a busy network thread: the sender thread gets to run before paho re-sends
        on_connect(*args)
        time.sleep(0.3)

    pub.client.on_connect = slow_on_connect
    sent = []
    try:
        pub.start()
        wait(lambda: pub.connected)
        first = [event(k) for k in range(10)]
        pub.publish_events(first)
        assert pub.wait_flushed(10)
        os.kill(broker.proc.pid, signal.SIGSTOP)  # frozen: what is sent now is never acknowledged
        carried = [event(k) for k in range(10, 20)]
        pub.publish_events(carried)
        wait(lambda: pub.in_flight == 10)
        broker.kill()
        wait(lambda: not pub.connected)
        later = [event(k) for k in range(20, 40)]
        pub.publish_events(later)
        broker.start()
        assert pub.wait_flushed(20)
        sent = [e.event_id for e in first + carried + later]
        assert sub.wait_unique(len(sent)) == sent
    finally:
        pub.close()
        sub.close()


def test_full_disk_keeps_publishing_from_memory_and_spools_again_when_there_is_room(broker, tmp_path):
    # A real full file system: a 1 MB tmpfs under the spool, filled to its last byte.
    from tests.support.fault_harness import fill, small_fs

    metrics = Metrics()
    sub = Subscriber(broker.port)
    with small_fs(tmp_path / "disk", 1) as disk:
        pub = publisher(broker.port, disk / "spool", metrics=metrics).start()
        try:
            wait(lambda: pub.connected)
            pub.publish_events([event(k) for k in range(5)])
            filler = fill(disk)
            for k in range(5, 205):  # no exception may reach the caller (the pipeline loop)
                pub.publish_event(event(k))
            assert pub.disk_full and metrics.disk_full.labels("spool")._value.get() == 1
            assert len(sub.wait_unique(205)) == 205  # published straight from memory meanwhile
            wait(lambda: pub.pending == 0)
            filler.unlink()
            pub.publish_events([event(k) for k in range(205, 210)])
            assert not pub.disk_full and metrics.disk_full.labels("spool")._value.get() == 0
            assert len(sub.wait_unique(210)) == 210
            assert pub.alive and pub.memory_dropped == 0
        finally:
            pub.close()
            sub.close()


def test_our_own_disconnect_is_not_a_warning(broker, tmp_path, caplog):
    pub = publisher(broker.port, tmp_path / "spool").start()
    wait(lambda: pub.connected)
    with caplog.at_level("INFO", logger="app.alerts.publisher"):
        pub.close()
    said = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert said and all(r.levelname == "INFO" for r in said), [(r.levelname, r.getMessage()) for r in said]
