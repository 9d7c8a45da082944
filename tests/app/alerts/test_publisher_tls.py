"""MQTT over TLS against a real mosquitto TLS listener (a throwaway CA): the app's config reaches the publisher,
which delivers only to a broker whose certificate chains to the configured CA."""

from __future__ import annotations

import json
import shutil
import threading
import time

import paho.mqtt.client as mqtt
import pytest
import yaml

from app.alerts.publisher import AlertPublisher, tls_context
from app.config import load_config
from app.runner import mqtt_publisher
from fleet.local.mosquitto import TlsListener, mosquitto
from tests.app.conftest import GOOD, write
from tests.support.tls import TestCA

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = TestCA(d / "site", "site CA")
    return {
        "ca": ca,
        "server": ca.issue("broker", hosts=["127.0.0.1", "localhost"]),
        "client": ca.issue("jetson-01", client=True),
        "other": TestCA(d / "other", "someone else's CA"),
    }


@pytest.fixture(scope="module")
def broker(pki):
    """Plain listener (the test's subscriber) plus a TLS listener that requires a client certificate."""
    tls = TlsListener(pki["ca"].path, pki["server"].cert, pki["server"].key, require_certificate=True)
    svc = mosquitto(tls=tls)
    try:
        yield svc.start()
    finally:
        svc.stop()
        shutil.rmtree(svc.workdir, ignore_errors=True)


def subscribe(port: int) -> tuple[mqtt.Client, list[dict], threading.Event]:
    got: list[dict] = []
    arrived = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, msg: (got.append(json.loads(msg.payload)), arrived.set())
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe("edgecv/#", qos=1)
    assert subscribed.wait(10)
    return sub, got, arrived


def test_app_config_publishes_over_tls_with_a_client_certificate(pki, broker, site):
    body = GOOD.replace(
        "mqtt: {host: 127.0.0.1, port: 1884}",
        yaml.safe_dump({"mqtt": {
            "host": "127.0.0.1", "port": broker.tls_port, "tls": True, "tls_ca": str(pki["ca"].path),
            "tls_cert": str(pki["client"].cert), "tls_key": str(pki["client"].key),
        }}),
    )  # fmt: skip
    resolved = load_config(write(site, body + f"spool_dir: {site / 'spool'}\n"))
    sub, got, arrived = subscribe(broker.port)
    pub = mqtt_publisher(resolved)
    try:
        pub.start()
        pub.publish("drift", {"event_id": "e-1", "psi": 0.3})
        assert pub.wait_flushed(15), f"not delivered over TLS ({pub.connect_failures} failed connects)"
        assert arrived.wait(10) and got == [{"event_id": "e-1", "psi": 0.3}]
    finally:
        pub.close(drain_timeout=0)
        sub.disconnect()
        sub.loop_stop()


def test_broker_signed_by_another_ca_is_refused_and_nothing_is_lost(pki, broker, tmp_path):
    untrusting = tls_context(str(pki["other"].path), str(pki["client"].cert), str(pki["client"].key))
    pub = AlertPublisher("127.0.0.1", broker.tls_port, "site-a", "jetson-01", tmp_path / "spool",
                         reconnect_min_s=0.1, reconnect_max_s=0.2, tls=untrusting)  # fmt: skip
    try:
        pub.start()
        pub.publish("drift", {"event_id": "e-2"})
        deadline = time.monotonic() + 10
        while pub.connect_failures < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pub.connect_failures >= 2 and not pub.connected
        assert pub.pending == 1  # kept in the spool for when the CA is fixed
    finally:
        pub.close(drain_timeout=0)


def test_plain_client_cannot_talk_to_the_tls_listener(broker, tmp_path):
    """The TLS port really is TLS: a plaintext publisher never connects to it."""
    pub = AlertPublisher("127.0.0.1", broker.tls_port, "site-a", "jetson-01", tmp_path / "spool",
                         reconnect_min_s=0.1, reconnect_max_s=0.2)  # fmt: skip
    try:
        pub.start()
        time.sleep(2)
        assert not pub.connected
    finally:
        pub.close(drain_timeout=0)
