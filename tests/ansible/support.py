"""What the Ansible tests need around the test hosts: the wheelhouse, the stand-ins, an inventory, a runner."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.ansible.hosts import CACHE, Lab

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
VAULT_ID = f"demo@{FIXTURES / 'demo-vault-password'}"
DEVICES = {"depot_north": ["jetson-north-01", "jetson-north-02"], "yard_south": ["jetson-south-01"]}
WHEEL_CACHE = CACHE / "wheelhouse"

# Jetson-only files the roles read or run, replaced by stand-ins that log their arguments.
NV_TEGRA_RELEASE = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
NVPMODEL = """#!/bin/sh
# stand-in for NVIDIA's nvpmodel: remembers the mode, logs every call
echo "nvpmodel $*" >> /var/log/jetson-standins.log
state=/var/lib/nvpmodel-standin
case "$1" in
  -q) echo "NV Power Mode: MODE_$(cat $state 2>/dev/null || echo 1)"; cat $state 2>/dev/null || echo 1 ;;
  -m) echo "$2" > $state ;;
esac
"""
JETSON_CLOCKS = """#!/bin/sh
# stand-in for NVIDIA's jetson_clocks: logs every call
echo "jetson_clocks $*" >> /var/log/jetson-standins.log
"""


def role_packages() -> list[str]:
    """Pinned packages the roles install from the wheelhouse (their defaults are the one source)."""
    pkgs: list[str] = []
    for role, var in (("triton", "triton_wheel_packages"), ("inference_app", "inference_app_packages")):
        defaults = yaml.safe_load((REPO / "roles" / role / "defaults/main.yml").read_text())
        pkgs += [p for p in defaults[var] if not p.startswith(("edgecv-fleet", "{{"))]
    return sorted(set(pkgs))


def _wheel_key(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def build_wheelhouse(dest: Path) -> Path:
    """The repository's wheel plus the pinned runtime wheels (downloaded once into the cache from PyPI)."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    have = {_wheel_key("-".join(w.name.split("-")[:2])) for w in WHEEL_CACHE.glob("*.whl")}
    missing = [p for p in role_packages() if _wheel_key(p.replace("==", "-")) not in have]
    if missing:
        pip = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(WHEEL_CACHE),
        ]
        subprocess.run([*pip, *missing], check=True)
    dest.mkdir(parents=True, exist_ok=True)
    for wheel in WHEEL_CACHE.glob("*.whl"):
        (dest / wheel.name).symlink_to(wheel)
    pip_wheel = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        str(REPO),
        "-w",
        str(dest),
    ]
    subprocess.run(pip_wheel, check=True, capture_output=True)
    return dest


def put_standins(lab: Lab, video: Path) -> None:
    for name in lab.names:
        lab.stand_in(name, "/etc/nv_tegra_release", NV_TEGRA_RELEASE)
        lab.stand_in(name, "/usr/sbin/nvpmodel", NVPMODEL, 0o755)
        lab.stand_in(name, "/usr/bin/jetson_clocks", JETSON_CLOCKS, 0o755)
        # The cameras: a short video file where the site has RTSP cameras.
        lab.stand_in(name, "/srv/edgecv-test/camera.avi", "", 0o644)
        subprocess.run(
            ["scp", "-q", *lab.ssh_options(), str(video), f"root@{lab.host(name).address}:/srv/edgecv-test/camera.avi"],
            check=True,
        )


def write_inventory(lab: Lab, root: Path, overrides: dict) -> Path:
    """An inventory layered over inventory/example: same sites and devices, reached on the test bridge."""
    inv = root / "inventory"
    (inv / "host_vars").mkdir(parents=True, exist_ok=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {n: None for n in lab.names}}}))
    for name in lab.names:
        host_vars = {
            "ansible_host": lab.host(name).address,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(lab.ssh_key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            **overrides,
        }
        (inv / "host_vars" / f"{name}.yml").write_text(yaml.safe_dump(host_vars, sort_keys=False))
    return inv


@dataclass
class Run:
    rc: int
    output: str
    seconds: float
    recap: dict[str, dict[str, int]]

    def changed(self) -> dict[str, int]:
        return {h: r["changed"] for h, r in self.recap.items()}


RECAP = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.M)


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    tail = output[output.rfind("PLAY RECAP") :] if "PLAY RECAP" in output else ""
    return {m[1]: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m[2])} for m in RECAP.finditer(tail)}


class Ansible:
    """Runs ansible-playbook from the repository with the example inventory plus the lab's layer."""

    def __init__(self, lab: Lab, inventory: Path, logdir: Path):
        self.lab, self.inventory, self.logdir = lab, inventory, logdir
        self.env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(logdir / "facts"),  # never facts of an earlier lab
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        self.count = 0

    def diagnose(self) -> str:
        """Failed units and their journal on every host, for a failing run's message."""
        cmd = (
            "systemctl --failed --no-legend; for u in $(systemctl --failed --no-legend --plain | cut -d' ' -f1);"
            " do journalctl -u $u -n 15 --no-pager; done; journalctl -u edgecv-app -u tritonserver -n 40 --no-pager"
        )
        return "".join(f"\n--- {n}\n{self.lab.ssh(n, cmd, check=False)}" for n in self.lab.names)

    def playbook(self, playbook: str, *args: str, timeout: float = 400) -> Run:
        argv = [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i", str(REPO / "inventory/example"), "-i", str(self.inventory),
            "--vault-id", VAULT_ID, str(REPO / "playbooks" / playbook), *args,
        ]  # fmt: skip
        start = time.monotonic()
        res = subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        seconds = time.monotonic() - start
        self.count += 1
        log = self.logdir / f"{self.count:02d}-{playbook.removesuffix('.yml')}.log"
        log.write_text(" ".join(argv) + "\n\n" + res.stdout + res.stderr)
        return Run(res.returncode, res.stdout + res.stderr, seconds, parse_recap(res.stdout))
