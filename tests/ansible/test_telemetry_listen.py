"""node-exporter listens where the inventory's metrics_listen_interface says: loopback by default, one named
interface's address otherwise, and the device's agent scrapes it there."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from tests.ansible.support import DEVICES

pytestmark = [pytest.mark.ansible, pytest.mark.slow, pytest.mark.timeout(1800)]

HOSTS = [h for hosts in DEVICES.values() for h in hosts]


def _listeners(ansible, name: str) -> set[str]:
    return {ln.split()[3] for ln in ansible.lab.ssh(name, "ss -Hltn 'sport = :9100'").splitlines()}


@pytest.mark.parametrize("name", HOSTS)
def test_node_exporter_listens_on_loopback_only_by_default(ansible, converged, name):
    assert _listeners(ansible, name) == {"127.0.0.1:9100"}


def test_a_named_interface_moves_node_exporter_and_the_scrape_to_its_address(ansible, converged):
    name = "jetson-north-02"
    address = ansible.lab.host(name).address
    run = ansible.playbook("telemetry.yml", "--limit", name, "-e", "metrics_listen_interface=host0")
    try:
        assert run.rc == 0, run.output[-4000:]
        assert _listeners(ansible, name) == {f"{address}:9100"}
        # reachable from the bridge now, and scraped by the agent at that address
        assert b"node_cpu_seconds_total" in urllib.request.urlopen(f"http://{address}:9100/metrics", timeout=10).read()
        deadline, node = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            targets = json.loads(
                ansible.lab.ssh(
                    name,
                    'python3 -c "import urllib.request as u; '
                    "print(u.urlopen('http://127.0.0.1:9090/api/v1/targets').read().decode())\"",
                )
            )
            # (a restarted agent lists no targets until its first scrape round)
            node = next((t for t in targets["data"]["activeTargets"] if t["labels"]["job"] == "node"), {})
            if node.get("scrapeUrl", "").startswith(f"http://{address}:9100") and node.get("health") == "up":
                break
            time.sleep(2)
        assert node.get("scrapeUrl", "").startswith(f"http://{address}:9100") and node.get("health") == "up", node
    finally:
        assert ansible.playbook("telemetry.yml", "--limit", name).rc == 0
    assert _listeners(ansible, name) == {"127.0.0.1:9100"}
