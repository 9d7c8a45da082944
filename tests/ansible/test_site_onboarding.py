"""The "new site" walkthrough of inventory/README.md, run literally: its shell block, in a fresh environment
inventory, makes jetson-north-01 the first device of a new site under a new vault id and provisions it."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.ansible.support import REPO

pytestmark = [pytest.mark.ansible, pytest.mark.slow, pytest.mark.timeout(900)]


def walkthrough() -> str:
    text = (REPO / "inventory/README.md").read_text()
    section = text[text.index("## A new site") :]
    return re.search(r"```sh\n(.*?)```", section, re.S)[1]


def test_readme_walkthrough_onboards_a_site_first_time(ansible, converged, tmp_path):
    device = "jetson-north-01"
    lab_vars = yaml.safe_load((ansible.inventory / "host_vars" / f"{device}.yml").read_text())
    # The environment before the walkthrough: only its environment-wide settings (how the controller logs in,
    # where the wheelhouse and artifacts are), as group_vars/all of a real environment holds them.
    env_inv = tmp_path / "inventory" / "lab"
    (env_inv / "group_vars/all").mkdir(parents=True)
    example = yaml.safe_load((REPO / "inventory/example/group_vars/all/main.yml").read_text())
    lab_all = {k: v for k, v in lab_vars.items() if k not in ("ansible_host", "site_cameras")}
    (env_inv / "group_vars/all/main.yml").write_text(yaml.safe_dump({**example, **lab_all}, sort_keys=False))
    env = {
        **ansible.env,
        "INV": str(env_inv), "SITE": "harbor_east", "DEVICE": "jetson-east-01",
        "ADDRESS": ansible.lab.host(device).address, "MODULE": "agx-orin",
        "CAMERA_URL": "/srv/edgecv-test/camera.avi", "MQTT_HOST": "",
        "REMOTE_WRITE_URL": lab_vars["telemetry_remote_write_url"], "VAULT_DIR": str(tmp_path / "vault"),
        "MQTT_PASSWORD": "harbor-mqtt", "REMOTE_WRITE_PASSWORD": "harbor-remote-write",
    }  # fmt: skip
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthrough()],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (ansible.logdir / "onboarding.log").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "failed=0" in run.stdout and "jetson-east-01" in run.stdout
    # The site's secrets are encrypted under its own vault id, with a password outside the repository.
    assert (
        (env_inv / "group_vars/harbor_east/vault.yml").read_text().startswith("$ANSIBLE_VAULT;1.2;AES256;harbor_east")
    )
    assert oct((tmp_path / "vault/harbor_east").stat().st_mode & 0o777) == "0o600"
    # The device now runs as the new site's device.
    config = yaml.safe_load(ansible.lab.ssh(device, "cat /etc/edgecv/app.yaml"))
    assert (config["site_id"], config["device_id"]) == ("harbor-east", "jetson-east-01")
    assert ansible.lab.ssh(device, "cat /etc/prometheus/remote-write.password") == "harbor-remote-write"
    ansible.lab.ssh(device, "python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:9108/readyz')\"")
