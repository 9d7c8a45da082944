"""The container runtime on a real Docker (docker.io from Debian, in the nspawn host): JetPack's own
daemon.json merged, the running daemon's default runtime checked, the data-root moved, images pruned.

The lab's x86 hosts skip the container runtime in the site converge (it is aarch64's); this test turns it on
for one device. The device's daemon.json starts as JetPack ships it (the nvidia runtime declared, not the
default) plus the settings Docker needs inside an nspawn container, which the merge must keep (an
overwrite would drop them and Docker would not start). nvidia-container-runtime is runc under that name.
"""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.ansible, pytest.mark.slow, pytest.mark.timeout(1800)]

HOST = "jetson-north-01"
DATA_ROOT = "/srv/docker"
STOCK = {
    "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
    # the device's own settings (here: what Docker needs in a container without netfilter or overlay-on-overlay)
    "iptables": False, "ip-masq": False, "ip-forward": False, "bridge": "none", "storage-driver": "vfs",
}  # fmt: skip
ARGS = ["--limit", HOST, "--tags", "jetpack-container", "-e", "jetpack_container_runtime=true",
        "-e", f"jetpack_docker_data_root={DATA_ROOT}"]  # fmt: skip


@pytest.fixture(scope="module")
def docker_host(ansible, converged):
    ssh = ansible.lab.ssh
    ssh(HOST, "mkdir -p /etc/docker && cat > /etc/docker/daemon.json", stdin=json.dumps(STOCK, indent=4))
    ssh(HOST, "ln -sf /usr/sbin/runc /usr/local/bin/nvidia-container-runtime")
    run = ansible.playbook("jetpack.yml", *ARGS)
    assert run.rc == 0, run.output[-5000:] + ansible.diagnose()
    return ansible


def _info(ansible) -> dict:
    return json.loads(ansible.lab.ssh(HOST, "docker info --format '{{json .}}'"))


def test_daemon_json_is_merged_and_the_nvidia_runtime_is_the_running_default(docker_host):
    ssh = docker_host.lab.ssh
    merged = json.loads(ssh(HOST, "cat /etc/docker/daemon.json"))
    assert {k: merged[k] for k in STOCK} == STOCK  # JetPack's and the device's keys kept
    assert merged["default-runtime"] == "nvidia" and merged["log-driver"] == "journald"
    assert merged["data-root"] == DATA_ROOT
    info = _info(docker_host)
    assert (info["DefaultRuntime"], info["DockerRootDir"]) == ("nvidia", DATA_ROOT)
    assert "nvidia" in info["Runtimes"]
    # Docker does not start without its data-root's mount (an NVMe not mounted must not fill the eMMC).
    assert DATA_ROOT in ssh(HOST, "systemctl show -p RequiresMountsFor --value docker")


def test_unused_images_are_pruned_keeping_those_in_use_and_the_newest(docker_host):
    ssh = docker_host.lab.ssh
    for tag in range(1, 5):  # oldest first; the image list orders by creation second
        ssh(HOST, f"cd /tmp && echo {tag} > f && tar cf - f | docker import - edgecv/prune:{tag}")
        time.sleep(1.1)
    ssh(HOST, "docker create --name uses-the-oldest edgecv/prune:1 /f")

    run = docker_host.playbook("jetpack.yml", *ARGS)  # keeps 2 newest by default

    assert run.rc == 0 and run.recap[HOST]["changed"] == 1, run.output[-4000:]
    tags = set(ssh(HOST, "docker image ls edgecv/prune --format '{{.Tag}}'").split())
    assert tags == {"1", "3", "4"}  # 1 is in use; 3 and 4 are the newest; 2 went
    again = docker_host.playbook("jetpack.yml", *ARGS)
    assert again.rc == 0 and again.recap[HOST]["changed"] == 0, again.output[-4000:]  # daemon.json untouched


def test_a_daemon_not_running_with_the_nvidia_default_fails_clearly(docker_host):
    """daemon.json says nvidia, the running daemon does not (a restart lost with an earlier failed run)."""
    ssh = docker_host.lab.ssh
    right = ssh(HOST, "cat /etc/docker/daemon.json")
    stale = {k: v for k, v in json.loads(right).items() if k != "default-runtime"}
    ssh(HOST, "cat > /etc/docker/daemon.json && systemctl restart docker", stdin=json.dumps(stale))
    ssh(HOST, "cat > /etc/docker/daemon.json", stdin=right)  # the file is right again; the daemon still runs runc
    try:
        run = docker_host.playbook("jetpack.yml", *ARGS)
        assert run.rc != 0 and run.recap[HOST]["failed"] == 1, run.output[-4000:]
        assert "the running Docker daemon's default runtime is 'runc'" in run.output, run.output[-4000:]
    finally:
        ssh(HOST, "systemctl restart docker")
    assert _info(docker_host)["DefaultRuntime"] == "nvidia"
