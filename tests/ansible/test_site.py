"""Real ansible-playbook runs of playbooks/site.yml on three throwaway hosts (two sites), checked with testinfra."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import testinfra
import yaml

from tests.ansible.conftest import MANIFEST
from tests.ansible.support import DEVICES, REPO

pytestmark = [pytest.mark.ansible, pytest.mark.slow, pytest.mark.timeout(1800)]

HOSTS = [h for hosts in DEVICES.values() for h in hosts]
MODEL = yaml.safe_load(MANIFEST.read_text())["name"]


@pytest.fixture(scope="module")
def infra(ansible, converged):
    """testinfra hosts through its ansible backend (SSH sockets reused via [persistent_connection])."""
    inv = ansible.inventory.parent / "testinfra.yml"
    hosts = {}
    for name in HOSTS:
        hostvars = yaml.safe_load((ansible.inventory / "host_vars" / f"{name}.yml").read_text())
        hosts[name] = {k: v for k, v in hostvars.items() if k.startswith("ansible_")}
    inv.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    Path("~/.ansible/pc").expanduser().mkdir(parents=True, exist_ok=True)
    # testinfra runs ansible-inventory from PATH and reads ansible.cfg through ANSIBLE_CONFIG.
    os.environ.setdefault("ANSIBLE_CONFIG", ansible.env["ANSIBLE_CONFIG"])
    os.environ["PATH"] = ansible.env["PATH"]
    return {name: testinfra.get_host(f"ansible://{name}", ansible_inventory=str(inv)) for name in HOSTS}


def test_first_converge_succeeds(converged):
    first, _ = converged
    assert sorted(first.recap) == sorted(HOSTS)
    for host, counts in first.recap.items():
        assert counts["failed"] == 0 and counts["unreachable"] == 0, host
        assert counts["changed"] > 0, f"{host}: a fresh host must be changed by the first converge"


def test_second_run_changes_nothing(converged):
    _, second = converged
    assert second.rc == 0, second.output[-4000:]
    assert second.changed() == dict.fromkeys(HOSTS, 0), second.output[-6000:]


@pytest.mark.parametrize("name", HOSTS)
def test_packages_files_and_units(infra, name):
    host = infra[name]
    for pkg in ("prometheus", "prometheus-node-exporter", "python3-venv", "libpython3.11", "logrotate"):
        assert host.package(pkg).is_installed, pkg
    for unit in ("tritonserver", "edgecv-app", "prometheus", "prometheus-node-exporter", "jetson-clocks"):
        svc = host.service(unit)
        assert svc.is_enabled and svc.is_running, unit
    config = host.file("/etc/edgecv/app.yaml")
    assert (config.user, config.group, config.mode) == ("root", "edgecv", 0o640)  # holds the MQTT password
    assert host.file("/etc/edgecv").mode == 0o750
    assert host.file("/var/lib/edgecv/spool").user == "edgecv"
    rw = host.file("/etc/prometheus/remote-write.password")
    assert (rw.group, rw.mode) == ("prometheus", 0o640)
    site = next(s for s, hosts in DEVICES.items() if name in hosts)
    assert rw.content_string == f"demo-{site}-remote-write-password"  # the site's own vault, never in plain text
    # The hardened unit runs as its own user with write access to the spool and evidence only.
    unit = host.file("/etc/systemd/system/edgecv-app.service").content_string
    assert "User=edgecv" in unit and "ProtectSystem=strict" in unit
    assert "ReadWritePaths=/var/lib/edgecv/spool /var/lib/edgecv/evidence" in unit
    # The jetpack role drove the Jetson stand-ins: clocks pinned at boot.
    log = host.file("/var/log/jetson-standins.log").content_string
    assert "nvpmodel -q" in log and "jetson_clocks" in log
    assert host.file("/etc/systemd/journald.conf.d/edgecv.conf").contains("SystemMaxUse=256M")


@pytest.mark.parametrize("name", HOSTS)
def test_triton_serves_the_model(infra, name):
    host = infra[name]
    for port in (8000, 8001, 8002):  # loopback only (metrics_listen_interface defaults to lo); gRPC is dual-stack
        lines = host.check_output(f"ss -Hltn sport = :{port}").splitlines()
        local = {line.split()[3].rsplit(":", 1)[0] for line in lines}
        assert local and local <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, (port, local)
    ready = host.run(
        f"python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/v2/models/{MODEL}/ready').status)\""
    )
    assert ready.stdout.strip() == "200", ready.stderr
    live = host.file(f"/var/lib/tritonserver/models/{MODEL}")
    assert live.is_symlink and live.linked_to.endswith(
        f"/releases/{MODEL}-{yaml.safe_load(MANIFEST.read_text())['version']}/{MODEL}"
    )


def _get(host, url: str) -> str:
    return host.check_output(f"python3 -c \"import urllib.request as u; print(u.urlopen('{url}').read().decode())\"")


@pytest.mark.parametrize("name", HOSTS)
def test_app_ready_and_exporting_stage_histograms(infra, name):
    host = infra[name]
    # metrics_listen_interface defaults to lo: the status server is not reachable from the site network.
    assert host.socket("tcp://127.0.0.1:9108").is_listening
    assert not host.socket("tcp://0.0.0.0:9108").is_listening
    _get(host, "http://127.0.0.1:9108/readyz")  # raises on anything but 2xx
    metrics = _get(host, "http://127.0.0.1:9108/metrics")
    for stage in ("capture", "preprocess", "inference", "postprocess", "total"):
        assert f'edgecv_stage_latency_seconds_bucket{{le="0.001",stage="{stage}"}}' in metrics or (
            f'edgecv_stage_latency_seconds_bucket{{stage="{stage}",le="0.001"}}' in metrics
        ), stage
    # Frames really went through Triton on this device.
    count = re.search(r'^edgecv_stage_latency_seconds_count\{stage="inference"\} (\S+)$', metrics, re.M)
    assert count and float(count[1]) > 0, metrics[:2000]
    cameras = {c["id"] for c in yaml.safe_load(host.file("/etc/edgecv/app.yaml").content_string)["cameras"]}
    expected = yaml.safe_load((REPO / "inventory/example/host_vars" / f"{name}.yml").read_text())[
        "inference_app_camera_ids"
    ]
    assert cameras == set(expected)


@pytest.mark.parametrize("name", HOSTS)
def test_node_exporter_and_agent(infra, name):
    host = infra[name]
    assert host.socket("tcp://127.0.0.1:9100").is_listening  # metrics_listen_interface defaults to lo
    assert "node_cpu_seconds_total" in _get(host, "http://127.0.0.1:9100/metrics")
    assert "--enable-feature=agent" in host.file("/etc/default/prometheus").content_string
    targets = json.loads(_get(host, "http://127.0.0.1:9090/api/v1/targets"))["data"]["activeTargets"]
    health = {t["labels"]["job"]: t["health"] for t in targets}
    assert set(health) == {"node", "edgecv-app", "triton"}


def test_limit_touches_only_that_site(ansible, converged, infra):
    """A changed setting applied with --limit reaches the named site's devices and no others."""
    run = ansible.playbook("telemetry.yml", "--limit", "yard_south", "-e", "telemetry_scrape_interval=20s")
    try:
        assert run.rc == 0, run.output[-4000:]
        assert sorted(run.recap) == DEVICES["yard_south"]
        assert run.changed()["jetson-south-01"] > 0
        for name in HOSTS:
            config = infra[name].file("/etc/prometheus/prometheus.yml").content_string
            assert ("scrape_interval: 20s" in config) == (name in DEVICES["yard_south"]), name
    finally:
        assert ansible.playbook("telemetry.yml", "--limit", "yard_south").rc == 0


def test_check_diff_on_converged_site_reports_nothing(ansible, converged):
    run = ansible.playbook("site.yml", "--limit", "yard_south", "--check", "--diff")
    assert run.rc == 0, run.output[-4000:]
    assert sorted(run.recap) == DEVICES["yard_south"]
    assert run.changed() == dict.fromkeys(DEVICES["yard_south"], 0), run.output[-6000:]


def test_wrong_sha256_fails_before_touching_the_running_model(ansible, converged, infra, tmp_path):
    host = infra["jetson-south-01"]
    started = host.check_output("systemctl show -p ActiveEnterTimestampMonotonic --value tritonserver")
    manifest = yaml.safe_load(MANIFEST.read_text())
    bad = {**manifest, "version": "9.9.9", "artifact": {**manifest["artifact"], "sha256": "0" * 64}}
    path = tmp_path / "models" / manifest["name"] / "manifest.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(bad, sort_keys=False))

    run = ansible.playbook("triton.yml", "--limit", "yard_south", "-e", f"triton_manifest={path}")

    assert run.rc != 0 and run.recap["jetson-south-01"]["failed"] == 1, run.output[-4000:]
    assert "sha256" in run.output.lower() or "checksum" in run.output.lower(), run.output[-4000:]
    live = host.file(f"/var/lib/tritonserver/models/{MODEL}")
    assert live.linked_to.endswith(f"{MODEL}-{manifest['version']}/{MODEL}")  # the old release stays live
    assert not host.file(f"/var/lib/tritonserver/releases/{MODEL}-9.9.9/{MODEL}/config.pbtxt").exists
    assert host.check_output("systemctl show -p ActiveEnterTimestampMonotonic --value tritonserver") == started
    ready = host.run(
        f"python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/v2/models/{MODEL}/ready').status)\""
    )
    assert ready.stdout.strip() == "200"


# Power modes by name, per module: yard_south asks for 15W (id 2 on the Orin NX, and fewer cores than
# MAXN, so nvpmodel wants a reboot); depot_north MAXN, except 15W on the Orin Nano that has no MAXN.
EXPECTED_MODE = {"jetson-north-01": ("MAXN", "0"), "jetson-north-02": ("15W", "0"), "jetson-south-01": ("15W", "2")}


@pytest.mark.parametrize("name", HOSTS)
def test_power_mode_by_name_applied_through_a_reboot(infra, name):
    host = infra[name]
    assert host.check_output("nvpmodel -q").splitlines() == [
        f"NV Power Mode: {EXPECTED_MODE[name][0]}",
        EXPECTED_MODE[name][1],
    ]
    log = host.file("/var/log/jetson-standins.log").content_string
    rebooted = name == "jetson-south-01"
    # The reboot happened (nvpmodel.service ran at a second boot) only where the mode needed one.
    assert (log.count("nvpmodel -f") == 2) == rebooted, log
    assert ("PM_CONFIG DEFAULT=2" in host.file("/etc/nvpmodel.conf").content_string) == rebooted


@pytest.mark.parametrize("name", HOSTS)
def test_nvidia_apt_source_is_the_stock_file_for_the_device_l4t(infra, name):
    host = infra[name]
    suite = "r36.3" if name == "jetson-north-02" else "r36.4"
    sources = host.check_output("grep -rl /jetson/ /etc/apt/sources.list.d/ || true").split()
    assert sources == ["/etc/apt/sources.list.d/nvidia-l4t-apt-source.list"]
    lines = [ln for ln in host.file(sources[0]).content_string.splitlines() if ln.startswith("deb")]
    assert len(lines) == 2 and all("signed-by=/etc/apt/keyrings/nvidia-jetson.asc" in ln for ln in lines), lines
    assert all(ln.endswith(f" {suite} main") for ln in lines), lines
    assert host.run("apt-get update -qq").rc == 0  # no "Conflicting values set for option Signed-By"
    assert host.package("nvidia-l4t-core").version.startswith(suite[1:] + ".0")
    assert "nvidia-l4t-core" in host.check_output("apt-mark showhold").split()


@pytest.mark.parametrize(
    "playbook,host,args,message",
    [
        # JetPack 5 on an Orin: refused by the facts every role reads, naming the way out.
        (
            "jetpack.yml",
            "jetson-north-02",
            ["-e", "jetson_facts_release_file=/etc/nv_tegra_release.r35"],
            "runs L4T R35",
        ),
        # No Triton container is known to run on R36.4 (24.08-py3-igpu needs driver 560).
        (
            "triton.yml",
            "jetson-south-01",
            ["-e", "triton_install_method=container"],
            "no container image known to run on L4T R36.4",
        ),
        # The tarball is never installed unverified.
        (
            "triton.yml",
            "jetson-south-01",
            ["-e", "triton_install_method=tarball"],
            "triton_tarball_sha256 must be the sha256",
        ),
        # A misspelled role variable fails instead of being ignored.
        (
            "jetpack.yml",
            "jetson-south-01",
            ["-e", "jetpack_nvpmodel_mod=MAXN"],
            "jetpack_nvpmodel_mod: not an option of role jetpack",
        ),
        # ... in every role: a leftover of a removed option, here telemetry's old per-role interface.
        (
            "telemetry.yml",
            "jetson-north-02",
            ["-e", "telemetry_metrics_listen_interface=eth0"],
            "telemetry_metrics_listen_interface: not an option of role telemetry",
        ),
        # The inventory says one module, the device tree another.
        ("jetpack.yml", "jetson-south-01", ["-e", "jetson_module=agx-orin"], "the device tree says"),
    ],
    ids=["jetpack5", "triton-container-r36.4", "tarball-sha256", "misspelled", "leftover-option", "wrong-module"],
)
def test_refused_before_anything_changes(ansible, converged, infra, playbook, host, args, message):
    infra[host].run(
        "sed 's/^# R36 (release), REVISION: [0-9.]*/# R35 (release), REVISION: 5.0/' /etc/nv_tegra_release > /etc/nv_tegra_release.r35"
    )
    before = infra[host].check_output(
        "find /etc /opt /var/lib/tritonserver -newer /etc/nv_tegra_release.r35 -type f | sort"
    )
    run = ansible.playbook(playbook, "--limit", host, *args)
    assert run.rc != 0 and run.recap[host]["failed"] == 1, run.output[-3000:]
    assert message in run.output, run.output[-3000:]
    assert run.recap[host]["changed"] == 0
    assert (
        infra[host].check_output("find /etc /opt /var/lib/tritonserver -newer /etc/nv_tegra_release.r35 -type f | sort")
        == before
    )
