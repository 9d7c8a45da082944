"""What the Ansible tests need around the test hosts: the wheelhouse, the stand-ins, an inventory, a runner."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from fleet.release.build import build_wheel
from tests.ansible.hosts import CACHE, Lab

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
# One vault id per site (a leaked site password opens that site only); demo passwords, test fixtures.
VAULT_IDS = [f"{site}@{FIXTURES / 'vault' / site}" for site in ("depot_north", "yard_south")]
DEVICES = {"depot_north": ["jetson-north-01", "jetson-north-02"], "yard_south": ["jetson-south-01"]}
WHEEL_CACHE = CACHE / "wheelhouse"

# Jetson-only facts the roles read, per device: three modules on two L4T releases, as in a real fleet.
RELEASE = "# R36 (release), REVISION: {rev}, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
MODULES = {
    # device-tree model (NUL-terminated, as /proc/device-tree/model is), L4T revision, nvpmodel.conf modes
    "jetson-north-01": (
        "NVIDIA Jetson AGX Orin Developer Kit",
        "4.0",
        [("MAXN", 12), ("15W", 4), ("30W", 8), ("50W", 12)],
    ),
    "jetson-north-02": ("NVIDIA Jetson Orin Nano Developer Kit", "3.0", [("15W", 6), ("7W", 4)]),
    "jetson-south-01": (
        "NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
        "4.0",
        [("MAXN", 8), ("10W", 4), ("15W", 4), ("25W", 8)],
    ),
}
MODULE_TYPES = {"jetson-north-01": "agx-orin", "jetson-north-02": "orin-nano", "jetson-south-01": "orin-nx"}
MODEL_FILE = "/etc/edgecv-test/device-tree-model"  # /proc/device-tree cannot be written in a container


def nvpmodel_conf(modes: list[tuple[str, int]], default: int = 0) -> str:
    """An /etc/nvpmodel.conf with named modes; each mode's online CPU cores decide whether a change needs a reboot."""
    out = ["# stand-in for NVIDIA's per-module nvpmodel.conf"]
    for i, (name, cores) in enumerate(modes):
        out.append(f"< POWER_MODEL ID={i} NAME={name} >")
        out += [f"CPU_ONLINE CORE_{c} {int(c < cores)}" for c in range(max(n for _, n in modes))]
    out.append(f"< PM_CONFIG DEFAULT={default} >")
    return "\n".join(out) + "\n"


# nvpmodel as the real one behaves: the mode lives in /var/lib/nvpmodel/status (set at boot from the
# conf's PM_CONFIG DEFAULT when absent); a change of online cores asks "reboot now?" on stdin and, unless
# answered YES, applies nothing.
NVPMODEL = r"""#!/bin/bash
echo "nvpmodel $*" >> /var/log/jetson-standins.log
conf=/etc/nvpmodel.conf status=/var/lib/nvpmodel/status
name() { sed -n "s/.*POWER_MODEL ID=$1 NAME=\([^ >]*\).*/\1/p" $conf; }
cores() { awk -v id="ID=$1" '/POWER_MODEL/{m=($3==id)} m && /^CPU_ONLINE/ && $3==1 {n++} END{print n+0}' $conf; }
current() { sed -n 's/^pmode:0*\([0-9][0-9]*\).*/\1/p' $status 2>/dev/null; }
case "$1" in
  -q) cur=$(current); echo "NV Power Mode: $(name $cur)"; echo "$cur" ;;
  -f) [ -s $status ] || { mkdir -p ${status%/*}; d=$(sed -n 's/.*PM_CONFIG DEFAULT=\([0-9]*\).*/\1/p' $conf); printf 'pmode:%04d fmode:quiet\n' $d > $status; } ;;
  -m) [ -n "$(name $2)" ] || { echo "NVPM ERROR: Invalid power mode $2"; exit 1; }
      if [ "$(cores $2)" != "$(cores $(current))" ]; then
        echo "NVPM WARN: Reboot required for changing to this power mode: $2"
        echo "NVPM WARN: DO YOU WANT TO REBOOT NOW? enter YES/yes to confirm:"
        read -r answer || answer=""
        case "$answer" in YES|yes) printf 'pmode:%04d fmode:quiet\n' $2 > $status; systemctl reboot ;; esac
        exit 0
      fi
      printf 'pmode:%04d fmode:quiet\n' $2 > $status ;;
esac
"""
NVPMODEL_UNIT = """[Unit]
Description=stand-in for NVIDIA's nvpmodel.service (applies the boot default when no mode is stored)
[Service]
Type=oneshot
ExecStart=/usr/sbin/nvpmodel -f /etc/nvpmodel.conf
[Install]
WantedBy=multi-user.target
"""
# JetPack's zram swap unit (a container cannot create zram devices: the unit only has to exist, disabled).
NVZRAMCONFIG_UNIT = """[Unit]
Description=stand-in for NVIDIA's nvzramconfig.service (zram swap)
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
[Install]
WantedBy=multi-user.target
"""
JETSON_CLOCKS = """#!/bin/sh
# stand-in for NVIDIA's jetson_clocks: logs every call
echo "jetson_clocks $*" >> /var/log/jetson-standins.log
"""
# JetPack's stock apt source: no signed-by (the key sits in trusted.gpg.d), the flashed L4T suite.
STOCK_SOURCE = "deb {url}/common r36.{rev} main\ndeb {url}/t234 r36.{rev} main\n"
# What the apt stand-in repository carries: the runtime components the jetpack role installs.
NVIDIA_PACKAGES = ("nvidia-l4t-core", "nvidia-container", "nvidia-tensorrt", "nvidia-cuda")


def build_nvidia_repo(dest: Path) -> Path:
    """A signed apt repository shaped like repo.download.nvidia.com/jetson (suites r36.3 and r36.4,
    components common and t234) carrying tiny packages: apt really reads it, checks its signature, and
    refuses two source files for it with different Signed-By."""
    gnupg = dest / "gnupg"
    gnupg.mkdir(parents=True, mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(gnupg)}
    gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "edgecv-test-nvidia", "ed25519", "sign", "never"], env=env, check=True)
    key = subprocess.run([*gpg, "--armor", "--export"], env=env, check=True, capture_output=True).stdout
    repo = dest / "jetson"
    repo.mkdir()
    (repo / "jetson-ota-public.asc").write_bytes(key)
    for rev in ("3", "4"):
        for comp in ("common", "t234"):
            pool = repo / comp / "pool"
            pool.mkdir(parents=True, exist_ok=True)
            names = [n for n in NVIDIA_PACKAGES if (n == "nvidia-l4t-core") == (comp == "t234")]
            stanzas = []
            for name in names:
                pkg = dest / f"build-{name}-{rev}"
                (pkg / "DEBIAN").mkdir(parents=True)
                version = f"36.{rev}.0-20240912212859" if name.startswith("nvidia-l4t") else f"6.{rev}.0"
                (pkg / "DEBIAN/control").write_text(
                    f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: edgecv tests <t@example.com>\n"
                    f"Description: stand-in for NVIDIA's {name}\n"
                )
                deb = pool / f"{name}_{version}_r36.{rev}_all.deb"
                subprocess.run(["dpkg-deb", "-Zgzip", "--build", str(pkg), str(deb)], check=True, capture_output=True)
                data = deb.read_bytes()
                control = (pkg / "DEBIAN/control").read_text().rstrip("\n")
                stanzas.append(
                    f"{control}\nFilename: pool/{deb.name}\nSize: {len(data)}\n"
                    f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
                )
            dist = repo / comp / "dists" / f"r36.{rev}"
            (dist / "main/binary-amd64").mkdir(parents=True)
            packages = "\n".join(stanzas).encode()
            (dist / "main/binary-amd64/Packages").write_bytes(packages)
            release = (
                f"Origin: edgecv-test\nLabel: stand-in for NVIDIA Jetson\nSuite: r36.{rev}\nCodename: r36.{rev}\n"
                f"Architectures: amd64 arm64\nComponents: main\nDate: Thu, 01 Jan 2026 00:00:00 UTC\nSHA256:\n"
                f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-amd64/Packages\n"
            )
            (dist / "Release").write_text(release)
            subprocess.run(
                [*gpg, "--clearsign", "-o", str(dist / "InRelease"), str(dist / "Release")], env=env, check=True
            )
    return dest


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
    build_wheel(dest)  # the release build's own, which takes turns with other builds of this tree
    return dest


def put_standins(lab: Lab, video: Path, repo_url: str) -> None:
    """Jetson-only files per device: L4T release, device-tree model, nvpmodel (+conf, boot unit), jetson_clocks,
    JetPack's stock apt source for the stand-in NVIDIA repository, and the cameras' video."""
    for name in lab.names:
        model, rev, modes = MODULES[name]
        lab.stand_in(name, "/etc/nv_tegra_release", RELEASE.format(rev=rev))
        lab.stand_in(name, MODEL_FILE, model + "\0")
        lab.stand_in(name, "/etc/nvpmodel.conf", nvpmodel_conf(modes))
        lab.stand_in(name, "/usr/sbin/nvpmodel", NVPMODEL, 0o755)
        lab.stand_in(name, "/etc/systemd/system/nvpmodel.service", NVPMODEL_UNIT)
        lab.stand_in(name, "/usr/bin/jetson_clocks", JETSON_CLOCKS, 0o755)
        lab.stand_in(name, "/etc/systemd/system/nvzramconfig.service", NVZRAMCONFIG_UNIT)
        lab.stand_in(
            name, "/etc/apt/sources.list.d/nvidia-l4t-apt-source.list", STOCK_SOURCE.format(url=repo_url, rev=rev[0])
        )
        lab.ssh(
            name,
            f"python3 -c \"import urllib.request as u; open('/etc/apt/trusted.gpg.d/jetson-ota-public.asc','wb').write(u.urlopen('{repo_url}/jetson-ota-public.asc').read())\""
            " && systemctl enable --now nvpmodel.service",
        )
        # The cameras: a short video file where the site has RTSP cameras.
        lab.stand_in(name, "/srv/edgecv-test/camera.avi", "", 0o644)
        subprocess.run(
            ["scp", "-q", *lab.ssh_options(), str(video), f"root@{lab.host(name).address}:/srv/edgecv-test/camera.avi"],
            check=True,
        )


JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"


class JournalReceiver:
    """The central side of journal shipping: the real systemd-journal-remote on the bridge, writing one journal
    file per sending device under `directory` (read back with journalctl --directory)."""

    def __init__(self, lab: Lab, directory: Path):
        self.lab, self.directory, self.port = lab, directory, lab.free_port()
        self.proc: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://{self.lab.state.gateway}:{self.port}"

    def start(self) -> None:
        argv = [JOURNAL_REMOTE, f"--listen-http={self.lab.state.gateway}:{self.port}", f"--output={self.directory}/",
                "--split-mode=host"]  # fmt: skip
        self.proc = self.lab.daemon(argv, self.port, "journal-remote")

    def stop(self) -> None:
        """The receiver goes away (the uplink or the central host is down)."""
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def messages(self, tag: str) -> list[str]:
        out = subprocess.run(
            ["journalctl", "--directory", str(self.directory), "-t", tag, "-o", "cat", "--no-pager"],
            capture_output=True, text=True,
        )  # fmt: skip
        return out.stdout.splitlines()


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
            "ansible_host_key_checking": False,  # throwaway hosts, new keys each boot (Mitogen reads this, not ssh args)
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

    def playbook(self, playbook: str, *args: str, timeout: float = 900) -> Run:
        argv = [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i", str(REPO / "inventory/example"), "-i", str(self.inventory),
            *(a for v in VAULT_IDS for a in ("--vault-id", v)), str(REPO / "playbooks" / playbook), *args,
        ]  # fmt: skip
        start = time.monotonic()
        res = subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        seconds = time.monotonic() - start
        self.count += 1
        log = self.logdir / f"{self.count:02d}-{playbook.removesuffix('.yml')}.log"
        log.write_text(" ".join(argv) + "\n\n" + res.stdout + res.stderr)
        return Run(res.returncode, res.stdout + res.stderr, seconds, parse_recap(res.stdout))
