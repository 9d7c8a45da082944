"""The app config's MQTT TLS settings: 8883 means TLS, mistakes are named by field (no broker needed)."""

import pytest
import yaml

from app.alerts.publisher import tls_context
from app.config import check_config, load_config
from tests.app.conftest import GOOD, write


def _mqtt(body: str, mqtt_section: dict) -> str:
    return body.replace("mqtt: {host: 127.0.0.1, port: 1884}", yaml.safe_dump({"mqtt": mqtt_section}))


@pytest.mark.parametrize(
    "section,field,message",
    [
        ({"host": "b", "port": 8883, "tls": False}, "mqtt", "port 8883 is MQTT over TLS"),
        ({"host": "b", "port": 8883, "tls_cert": "c.pem"}, "mqtt", "tls_cert and tls_key go together"),
        ({"host": "b", "port": 1883, "tls": False, "tls_ca": "ca.pem"}, "mqtt", "tls is false but tls_ca is set"),
        ({"host": "b", "port": 8883, "tls_ca": "missing-ca.pem"}, "mqtt.tls_ca", "file not found"),
    ],
    ids=["8883-without-tls", "cert-without-key", "ca-without-tls", "missing-ca"],
)
def test_tls_mistakes_are_named(site, section, field, message):
    path = write(site, _mqtt(GOOD, section))
    resolved, problems = check_config(path)
    assert resolved is None
    assert any(p.field == field and message in p.message for p in problems), [str(p) for p in problems]


def test_port_8883_means_tls_with_the_system_ca_store(site):
    cfg = load_config(write(site, _mqtt(GOOD, {"host": "b", "port": 8883}))).config.mqtt
    assert cfg.use_tls and cfg.tls_ca is None
    assert not load_config(write(site, GOOD)).config.mqtt.use_tls  # port 1884, nothing set
    assert tls_context().verify_mode.name == "CERT_REQUIRED"  # system store, chain and name checked
