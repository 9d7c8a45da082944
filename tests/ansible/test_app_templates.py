"""The inference_app role's templates rendered with its defaults: the app config carries the MQTT TLS settings
the app's schema accepts, and the unit passes `systemd-analyze verify` with its limits and ordering."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.config import MqttConfig
from tests.support.role_templates import render

pytestmark = [pytest.mark.ansible]

INVENTORY = {
    # a dict straight into the role's variable (rendering "{{ site_cameras }}" here would make it a string)
    "site_id": "depot-north", "inference_app_site_cameras": {"gate": {"url": "rtsp://10.0.0.21:554/s", "fps": 5}},
    "inference_app_camera_ids": ["gate"], "inventory_hostname": "jetson-north-01",
    "inference_app_model": {"name": "nanodet-m"}, "edgecv_wheelhouse_url": "https://wheels/", "edgecv_model_manifest": "m",
    # the fact jetson_facts' metrics_address.yml sets for metrics_listen_interface "lo" (the default)
    "jetson_metrics_listen_address": "127.0.0.1",
}  # fmt: skip


def app_config(**overrides) -> dict:
    return yaml.safe_load(render("inference_app", "app.yaml.j2", **{**INVENTORY, **overrides}))


def test_mqtt_on_8883_renders_tls_with_the_role_files():
    cfg = app_config(
        inference_app_mqtt_host="mqtt.depot-north.example.com", inference_app_mqtt_port=8883,
        inference_app_mqtt_tls_ca_pem="-----BEGIN CERTIFICATE-----\n", inference_app_mqtt_tls_cert_pem="cert",
        inference_app_mqtt_tls_key_pem="key", inference_app_mqtt_tls_verify_hostname=False,
    )  # fmt: skip
    mqtt = cfg["mqtt"]
    assert mqtt == {
        "host": "mqtt.depot-north.example.com", "port": 8883, "tls": True, "tls_verify_hostname": False,
        "tls_ca": "/etc/edgecv/tls/ca.pem", "tls_cert": "/etc/edgecv/tls/client.pem", "tls_key": "/etc/edgecv/tls/client.key",
    }  # fmt: skip
    assert MqttConfig.model_validate(mqtt).use_tls


def test_8883_without_a_ca_uses_the_system_store_and_1883_stays_plain():
    tls = app_config(inference_app_mqtt_host="broker", inference_app_mqtt_port=8883)["mqtt"]
    assert tls["tls"] is True and "tls_ca" not in tls and "tls_key" not in tls
    plain = app_config(inference_app_mqtt_host="broker", inference_app_mqtt_port=1883)["mqtt"]
    assert plain["tls"] is False and not MqttConfig.model_validate(plain).use_tls


def test_status_server_binds_the_address_metrics_listen_on():
    assert app_config()["metrics"] == {"host": "127.0.0.1", "port": 9108}
    assert app_config(jetson_metrics_listen_address="10.20.0.11")["metrics"]["host"] == "10.20.0.11"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_unit_verifies_with_limits_and_time_sync(tmp_path):
    venv = Path(sys.executable).parent.parent  # an existing venv with bin/edgecv, for ExecStart's check
    unit = render("inference_app", "edgecv-app.service.j2", **INVENTORY, inference_app_venv=str(venv))
    for line in ("MemoryMax=2G", "CPUQuota=200%", "WatchdogSec=60"):
        assert line in unit.splitlines()
    assert "time-sync.target" in next(ln for ln in unit.splitlines() if ln.startswith("After="))
    path = tmp_path / "edgecv-app.service"
    path.write_text(unit)
    res = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in res.stderr.splitlines() if "edgecv-app.service" in ln]
    assert res.returncode == 0 and not problems, res.stderr
