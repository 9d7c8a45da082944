"""Throwaway Debian test hosts for the Ansible suite (systemd-nspawn on a private bridge, no Docker).

Each host: an overlayfs over one cached bookworm rootfs (mounted only inside the host's private mount
namespace), systemd as PID 1, its own network namespace on a bridge with no default route. The controller
reaches the hosts by SSH on the bridge; packages reach the hosts through apt-cacher-ng bound to the bridge
address; wheels and model artifacts through a plain HTTP server on the bridge address.

    python -m tests.ansible.hosts up --count 3   # boot hosts by hand (prints their addresses)
    python -m tests.ansible.hosts cleanup        # tear down every lab left behind by a killed run
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_ROOT = Path(os.environ.get("EDGECV_HOSTS_STATE", "/run/edgecv-hosts"))
CACHE = Path(os.environ.get("EDGECV_CACHE", "/var/cache/edgecv"))
ROOTFS_TAR = CACHE / "rootfs-bookworm-v1.tar"
ROOTFS_DIR = CACHE / "rootfs-bookworm-v1"
ROOTFS_SEED = CACHE / "rootfs-probe"  # an earlier debootstrap of the same recipe, reused when present
ACNG_CACHE = CACHE / "apt-cacher-ng"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = "openssh-server,python3,sudo,systemd,systemd-sysv,dbus,iproute2,ca-certificates"
BINARIES = ("systemd-nspawn", "debootstrap", "apt-cacher-ng", "ip", "ssh", "ssh-keygen", "unshare")


def missing_prerequisite() -> str | None:
    """Why test hosts cannot run on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, overlayfs, systemd-nspawn)"
    for name in BINARIES:
        if not shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            return f"'{name}' is not installed (make apt installs it)"
    if not Path("/lib/systemd/systemd-journal-remote").exists():
        return "systemd-journal-remote is not installed (make apt installs it: the journal receiver)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs"
    return None


def _run(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


# --- the shared rootfs -------------------------------------------------------------------------------


def ensure_rootfs() -> Path:
    """The extracted rootfs every host overlays; built by debootstrap (~50 s) and cached as a tarball."""
    if (ROOTFS_DIR / ".complete").exists():
        return ROOTFS_DIR
    CACHE.mkdir(parents=True, exist_ok=True)
    if not ROOTFS_TAR.exists():
        _build_rootfs_tar()
    tmp = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE))
    _run("tar", "-C", str(tmp), "--numeric-owner", "-xpf", str(ROOTFS_TAR))
    (tmp / ".complete").touch()
    shutil.rmtree(ROOTFS_DIR, ignore_errors=True)
    tmp.rename(ROOTFS_DIR)
    return ROOTFS_DIR


def _build_rootfs_tar() -> None:
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE))
    root = work / "root"
    try:
        if (ROOTFS_SEED / "usr/sbin/sshd").exists():
            _run("cp", "-a", str(ROOTFS_SEED), str(root))
        else:
            _run("debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(root), MIRROR)
        # Per-host identity comes from the overlay, not from the image.
        for rel in ("etc/hostname", "var/lib/dbus/machine-id", "etc/machine-id"):
            (root / rel).unlink(missing_ok=True)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True)
        _run("tar", "-C", str(root), "--numeric-owner", "-cf", str(work / "rootfs.tar"), ".")
        (work / "rootfs.tar").rename(ROOTFS_TAR)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- one lab: a bridge, apt-cacher-ng, file servers and the hosts ---------------------------------------


@dataclass
class Host:
    name: str
    address: str
    netns: str
    veth: str
    cgroup: str
    pid: int = 0


@dataclass
class LabState:
    lab_id: str
    bridge: str
    gateway: str
    hosts: list[Host] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # helper daemons (apt-cacher-ng, file servers)
    acng_port: int = 0

    @classmethod
    def load(cls, path: Path) -> LabState:
        data = json.loads(path.read_text())
        data["hosts"] = [Host(**h) for h in data["hosts"]]
        return cls(**data)


def _free_subnet() -> ipaddress.IPv4Network:
    used = _run("ip", "-4", "-o", "addr").stdout
    for _ in range(100):
        net = ipaddress.ip_network(f"10.231.{secrets.randbelow(250) + 2}.0/24")
        if f" {net.network_address + 1}/" not in used:
            return net
    raise RuntimeError("no free 10.231.x.0/24 subnet for the test bridge")


def _free_port(host: str, below: int = 0) -> int:
    """A free TCP port on `host`; `below` for daemons that cannot take every port."""
    for _ in range(200):
        with socket.socket() as s:
            try:
                s.bind((host, 20000 + secrets.randbelow(below - 20000) if below else 0))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port on {host}")


def _wait_port(host: str, port: int, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not listening on {host}:{port} after {timeout:.0f}s")


class Lab:
    """Boot `names` as test hosts; a context manager that always tears everything down."""

    def __init__(self, names: list[str]):
        self.names = names
        lab_id = secrets.token_hex(2)
        net = _free_subnet()
        self.dir = STATE_ROOT / lab_id
        self.net = net
        self.state = LabState(lab_id=lab_id, bridge=f"ecvbr{lab_id}", gateway=str(net.network_address + 1))
        for i, name in enumerate(names):
            self.state.hosts.append(
                Host(
                    name=name,
                    address=str(net.network_address + 10 + i),
                    netns=f"edgecv-{lab_id}-{i}",
                    veth=f"ecv{lab_id}h{i}",
                    cgroup=f"edgecv-{lab_id}-{i}",
                )
            )

    # where things live
    @property
    def ssh_key(self) -> Path:
        return self.dir / "id_ed25519"

    def host(self, name: str) -> Host:
        return next(h for h in self.state.hosts if h.name == name)

    def _save(self) -> None:
        (self.dir / "state.json").write_text(json.dumps(asdict(self.state), indent=1))

    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        lower = ensure_rootfs()
        self.dir.mkdir(parents=True)
        self._save()
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgecv-controller", "-f", str(self.ssh_key))
        self._bridge()
        self._apt_cacher()
        for host in self.state.hosts:
            self._boot(host, lower)
        for host in self.state.hosts:
            _wait_port(host.address, 22, 60, f"sshd on {host.name}")
        # sshd comes up before boot finishes; provisioning a half-booted host races systemd.
        for host in self.state.hosts:
            state = self.ssh(host.name, "systemctl is-system-running --wait", check=False).strip()
            if state not in ("running", "degraded"):
                raise RuntimeError(f"{host.name} did not finish booting: {state}")

    def _bridge(self) -> None:
        st = self.state
        _run("ip", "link", "add", st.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{st.gateway}/{self.net.prefixlen}", "dev", st.bridge)
        _run("ip", "link", "set", st.bridge, "up")
        for h in st.hosts:
            _run("ip", "netns", "add", h.netns)
            _run("ip", "link", "add", h.veth, "type", "veth", "peer", "name", "host0", "netns", h.netns)
            _run("ip", "link", "set", h.veth, "master", st.bridge, "up")
            ns = ("ip", "-n", h.netns)
            _run(*ns, "addr", "add", f"{h.address}/{self.net.prefixlen}", "dev", "host0")
            _run(*ns, "link", "set", "host0", "up")
            _run(*ns, "link", "set", "lo", "up")
        self._save()

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen:
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return proc

    def _apt_cacher(self) -> None:
        """apt-cacher-ng on the bridge address only, backed by Debian's main mirror; its cache outlives runs."""
        conf = self.dir / "acng"
        (conf / "log").mkdir(parents=True)
        ACNG_CACHE.mkdir(parents=True, exist_ok=True)
        # apt-cacher-ng 3.7 keeps its port in a signed 16-bit int: ports from 32768 on come out negative.
        port = _free_port(self.state.gateway, below=32768)
        (conf / "acng.conf").write_text(
            f"CacheDir: {ACNG_CACHE}\nLogDir: {conf / 'log'}\nSupportDir: /usr/lib/apt-cacher-ng\n"
            f"Port: {port}\nBindAddress: {self.state.gateway}\nForeGround: 1\nExThreshold: 4\n"
            f"SocketPath: {conf / 'socket'}\nPidFile: {conf / 'pid'}\n"
            f"Remap-debrep: deb.debian.org/debian ; {MIRROR}/\n"
            "Remap-secdeb: security.debian.org deb.debian.org/debian-security ; deb.debian.org/debian-security\n"
        )
        proc = self._spawn(["apt-cacher-ng", "-c", str(conf)], conf / "log" / "stdout.log")
        self.state.pids.append(proc.pid)
        self.state.acng_port = port
        self._save()
        _wait_port(self.state.gateway, port, 20, "apt-cacher-ng", proc)

    def serve(self, directory: Path) -> str:
        """A read-only HTTP file server for `directory` on the bridge (wheelhouse, artifact store)."""
        port = _free_port(self.state.gateway)
        argv = [sys.executable, "-m", "http.server", "-b", self.state.gateway, "-d", str(directory), str(port)]
        proc = self._spawn(argv, self.dir / f"http-{port}.log")
        self.state.pids.append(proc.pid)
        self._save()
        _wait_port(self.state.gateway, port, 20, "http.server", proc)
        return f"http://{self.state.gateway}:{port}"

    def daemon(self, argv: list[str], port: int, what: str) -> subprocess.Popen:
        """A helper daemon of the lab listening on the bridge at `port` (torn down with the lab)."""
        proc = self._spawn(argv, self.dir / f"{what}-{port}.log")
        self.state.pids.append(proc.pid)
        self._save()
        _wait_port(self.state.gateway, port, 20, what, proc)
        return proc

    def free_port(self) -> int:
        return _free_port(self.state.gateway)

    def _prepare_upper(self, host: Host, upper: Path) -> None:
        """Files a fresh host needs before boot: identity, the controller's key, the site's apt proxy."""
        (upper / "etc/apt/apt.conf.d").mkdir(parents=True)
        (upper / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
        (upper / "etc/hostname").write_text(host.name + "\n")
        (upper / "etc/hosts").write_text(f"127.0.0.1 localhost\n{host.address} {host.name}\n")
        (upper / "etc/apt/apt.conf.d/01proxy").write_text(
            f'Acquire::http::Proxy "http://{self.state.gateway}:{self.state.acng_port}";\n'
            # the lab's own repositories on the bridge (the stand-in NVIDIA repository) are reached directly
            f'Acquire::http::Proxy::{self.state.gateway} "DIRECT";\n'
        )
        ssh = upper / "root/.ssh"
        ssh.mkdir(parents=True)
        os.chmod(upper / "root", 0o700)
        os.chmod(ssh, 0o700)
        keys = ssh / "authorized_keys"
        keys.write_text(self.ssh_key.with_suffix(".pub").read_text())
        os.chmod(keys, 0o600)

    def _boot(self, host: Host, lower: Path) -> None:
        hdir = self.dir / host.name
        upper, work, merged = hdir / "upper", hdir / "work", hdir / "merged"
        for d in (upper, work, merged):
            d.mkdir(parents=True)
        self._prepare_upper(host, upper)
        # Without systemd as PID 1 here, nspawn needs its own cgroups, a private mount namespace and
        # --register=no --keep-unit; the overlay is mounted inside that namespace only.
        cg = host.cgroup
        script = (
            "mount --make-rprivate /\n"
            "mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn\n"
            f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {merged}\n"
            # A reboot inside ends nspawn with 133: boot again (what systemd-nspawn@.service does), so roles
            # can really reboot a host. Each boot starts in a clean cgroup of its own (a previous boot's
            # sub-cgroups make systemd fail units with 219/CGROUP); this loop stays outside it. SIGTERM
            # (teardown) is passed on as the orderly poweroff.
            "stop=0; trap 'stop=1; kill -TERM $child 2>/dev/null' TERM\n"
            "while :; do\n"
            f'  for c in /sys/fs/cgroup/*/; do [ -d "$c{cg}" ] && find "$c{cg}" -mindepth 1 -depth -type d -exec rmdir {{}} + 2>/dev/null || true; done\n'
            f'  ( for c in /sys/fs/cgroup/*/; do mkdir -p "$c{cg}" && echo $BASHPID > "$c{cg}/cgroup.procs"; done\n'
            f"    exec systemd-nspawn --boot --register=no --keep-unit --quiet --machine={cg} "
            f"--hostname={host.name} -D {merged} --network-namespace-path=/run/netns/{host.netns} "
            "--console=passive ) & child=$!\n"
            "  rc=0; wait $child || rc=$?\n"  # (bash -e: a non-zero wait must not end the loop)
            "  while kill -0 $child 2>/dev/null; do rc=0; wait $child || rc=$?; done\n"
            '  [ "$stop" = 0 ] && [ "$rc" = 133 ] || exit $rc\n'
            "done\n"
        )
        proc = self._spawn(["unshare", "-m", "bash", "-ec", script], hdir / "console.log")
        host.pid = proc.pid
        self._save()

    def stand_in(self, name: str, path: str, content: str, mode: int = 0o644) -> None:
        """Put a file on a booted host (a Jetson-only file or binary the test replaces)."""
        self.ssh(name, f"mkdir -p $(dirname {path}) && cat > {path} && chmod {mode:o} {path}", stdin=content)

    def ssh(self, name: str, command: str, stdin: str | None = None, check: bool = True) -> str:
        host = self.host(name)
        argv = ["ssh", *self.ssh_options(), f"root@{host.address}", command]
        res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
        if check and res.returncode:
            raise RuntimeError(f"ssh {name} {command!r} failed ({res.returncode}): {res.stderr}")
        return res.stdout

    def ssh_options(self) -> list[str]:
        return [
            "-i", str(self.ssh_key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
        ]  # fmt: skip

    def down(self) -> None:
        if (self.dir / "state.json").exists():
            teardown(self.dir)


# --- teardown (also used for labs left by a killed run) -----------------------------------------------


def _cgroup_pids(cgroup: str) -> set[int]:
    pids: set[int] = set()
    for procs in Path("/sys/fs/cgroup").glob(f"*/{cgroup}/**/cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def _rm_cgroups(cgroup: str) -> None:
    for top in Path("/sys/fs/cgroup").glob(f"*/{cgroup}"):
        # deepest first: a cgroup directory is removed with rmdir once empty
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _nspawns(prefix: str) -> dict[int, str]:
    """systemd-nspawn processes whose --machine= name starts with PREFIX: {pid: machine}."""
    found: dict[int, str] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if Path(argv[0]).name == "systemd-nspawn":
                found |= {int(proc.name): a.split("=", 1)[1] for a in argv if a.startswith(f"--machine={prefix}")}
    return found


def _kill_container(nspawn: int) -> None:
    """SIGKILL a container's PID 1 (its PID namespace dies with it), then its nspawn. Where nspawn moves itself
    to /supervisor at the cgroup root (seen on the CI machine), the cgroup sweep finds nothing of the host; a
    container slower than 20 s to power off then outlived its killed wrapper, its Triton and app loading the
    machine for the rest of the test session."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == nspawn:  # field 4, ppid
                os.kill(int(stat.parent.name), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(nspawn, signal.SIGKILL)


def teardown(lab_dir: Path) -> None:
    state = LabState.load(lab_dir / "state.json")
    # An orderly poweroff of every container (nspawn turns SIGTERM into one), then kill what is left.
    for h in state.hosts:
        if h.pid and _alive(h.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(h.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(h.pid) for h in state.hosts if h.pid):
        time.sleep(0.2)
    for h in state.hosts:
        for pid in _cgroup_pids(h.cgroup) | ({h.pid} if h.pid else set()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid in _nspawns(f"edgecv-{state.lab_id}-"):
        _kill_container(pid)
    for pid in state.pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    time.sleep(0.3)
    for h in state.hosts:
        _rm_cgroups(h.cgroup)
        _run("ip", "link", "del", h.veth, check=False)
        _run("ip", "netns", "del", h.netns, check=False)
    _run("ip", "link", "del", state.bridge, check=False)
    shutil.rmtree(lab_dir, ignore_errors=True)


def cleanup() -> int:
    """Tear down every lab under STATE_ROOT; returns how many there were."""
    labs = [d for d in STATE_ROOT.glob("*") if (d / "state.json").exists()] if STATE_ROOT.exists() else []
    for lab in labs:
        teardown(lab)
    # Containers whose lab is gone (its state already removed): nothing else would ever stop them.
    for pid, machine in _nspawns("edgecv-").items():
        if not (STATE_ROOT / machine.split("-")[1]).exists():
            _kill_container(pid)
    return len(labs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.ansible.hosts", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="boot test hosts and leave them running (tear down with `cleanup`)")
    up.add_argument("--count", type=int, default=3)
    sub.add_parser("cleanup", help="tear down every lab left behind")
    args = parser.parse_args(argv)
    if args.cmd == "cleanup":
        print(f"removed {cleanup()} lab(s)")
        return 0
    why = missing_prerequisite()
    if why:
        print(why, file=sys.stderr)
        return 2
    lab = Lab([f"host{i}" for i in range(args.count)])
    lab.up()
    print(json.dumps({"state": str(lab.dir), "key": str(lab.ssh_key), **asdict(lab.state)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
