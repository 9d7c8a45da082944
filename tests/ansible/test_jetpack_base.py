"""The jetpack role's system decisions on the converged lab: headless boot, zram kept, free space checked
before downloads (against a real, nearly full file system)."""

from __future__ import annotations

import pytest

from tests.ansible.support import DEVICES

pytestmark = [pytest.mark.ansible, pytest.mark.slow, pytest.mark.timeout(1800)]

HOSTS = [h for hosts in DEVICES.values() for h in hosts]


@pytest.mark.parametrize("name", HOSTS)
def test_boots_headless_and_keeps_zram(ansible, converged, name):
    # The stand-in rootfs boots graphical.target (as JetPack does) and ships nvzramconfig disabled.
    assert ansible.lab.ssh(name, "systemctl get-default").strip() == "multi-user.target"
    assert ansible.lab.ssh(name, "systemctl is-enabled nvzramconfig.service", check=False).strip() == "enabled"


def test_free_space_is_checked_before_apt_downloads(ansible, converged):
    """apt's archive cache on a small file system, filled: the run stops before downloading, naming the path,
    the free and the needed space, and changes nothing."""
    host = "jetson-north-02"
    archives = "/var/cache/apt/archives"
    ansible.lab.ssh(host, f"mount -t tmpfs -o size=48m tmpfs {archives} && head -c 30M /dev/zero > {archives}/filler")
    try:
        run = ansible.playbook(
            "jetpack.yml",
            "--limit",
            host,
            "--tags",
            "jetpack-apt",
            "-e",
            f'{{"jetpack_min_free_mb": {{"{archives}": 32}}}}',
        )
        assert run.rc != 0 and run.recap[host]["failed"] == 1, run.output[-3000:]
        assert f"{archives} has 18 MB free, 32 MB needed" in run.output, run.output[-3000:]
        assert run.recap[host]["changed"] == 0
    finally:
        ansible.lab.ssh(host, f"umount {archives}")
