"""The app image of the release, built and started with podman (Debian's) from a base made here.

No registry is reached: the base is the debootstrap root file system tests/ansible already makes, imported
as an image, plus Debian's python3-venv; the app's wheels come from the host's pip (`pip download`) and the
image is built with PIP_NO_INDEX=1. The container serves /readyz against a local Triton (host network, host
IPC: the shared-memory path of balena/docker-compose.yml), and refuses a tampered model.

Slow (the image build takes minutes on vfs storage), marked `container`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from fleet.local.procs import free_port
from fleet.release.build import build
from tests.conftest import REPO_ROOT

# The image build alone takes minutes on vfs storage (12 min on this shared 2-core machine).
pytestmark = [pytest.mark.slow, pytest.mark.container, pytest.mark.integration, pytest.mark.timeout(2400)]

# This machine is itself a container: vfs storage, cgroupfs, runc and a bounded open-files limit are what
# work here (crun refuses hybrid cgroups; the default nofile limit is above ours). They work on any host.
PODMAN = ["podman", "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
          "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
BASE, PYTHON_BASE = "localhost/edgecv-base:bookworm", "localhost/edgecv-python:bookworm"


def podman(*args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=check)


def _exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


@pytest.fixture(scope="module")
def python_base() -> str:
    """Debian bookworm from the Ansible tests' debootstrap, plus python3-venv (the balenalib image's part)."""
    if not shutil.which("podman"):
        pytest.fail("podman is not installed (make setup installs it with the other Debian packages)")
    from tests.ansible.hosts import ROOTFS_TAR, ensure_rootfs

    if not _exists(BASE):
        ensure_rootfs()
        podman("import", str(ROOTFS_TAR), BASE)
    if not _exists(PYTHON_BASE):
        ctx = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True).stdout.strip())
        (ctx / "Dockerfile").write_text(f"FROM {BASE}\nRUN apt-get update && apt-get install -y --no-install-recommends "
                                        "python3-venv && rm -rf /var/lib/apt/lists/*\n")
        podman("build", "--isolation", "chroot", "--network", "host", *LIMITS[:2], "-t", PYTHON_BASE, str(ctx))
        shutil.rmtree(ctx)
    return PYTHON_BASE


@pytest.fixture(scope="module")
def app_image(python_base: str, tmp_path_factory) -> dict:
    ctx = tmp_path_factory.mktemp("release") / "ctx"
    build(REPO_ROOT / "fleets/example-fleet.yaml", ctx)
    app = ctx / "app"
    wheel = next((app / "wheels").glob("edgecv_fleet-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(app / "wheels"), "-c",
                    str(app / "constraints.txt"), "--only-binary", ":all:", str(wheel)], check=True,
                   capture_output=True)
    template = (app / "Dockerfile.template").read_text()
    (app / "Dockerfile").write_text(template.replace("%%BALENA_MACHINE_NAME%%", "genericx86-64-ext")
                                    .replace("%%BALENA_ARCH%%", "amd64"))
    tag = f"localhost/edgecv-app:test-{json.loads((ctx / 'release.json').read_text())['files']['app/constraints.txt'][:12]}"
    start = time.monotonic()
    podman("build", "--isolation", "chroot", "--network", "host", *LIMITS[:2], "--build-arg",
           f"BASE_IMAGE={python_base}", "--build-arg", "PIP_NO_INDEX=1", "-t", tag, str(app))
    print(f"app image built in {time.monotonic() - start:.0f} s")
    return {"image": tag, "context": ctx}


def _video(path: Path) -> Path:
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for i in range(40):
        frame = np.full((240, 320, 3), 90, np.uint8)
        cv2.rectangle(frame, (20 + 4 * i, 60), (90 + 4 * i, 200), (30, 30, 200), -1)
        out.write(frame)
    out.release()
    return path


def _config(triton_server, metrics_port: int) -> str:
    return yaml.safe_dump({
        "site_id": "lab", "device_id": "container-01",
        "manifest": "/opt/edgecv/registry/models/nanodet-m/manifest.yaml", "artifact_root": "/opt/edgecv/registry",
        "triton": {"url": triton_server.grpc_url, "shared_memory": "on"},
        "cameras": [{"id": "cam", "url": "/data/cam.avi", "fps": 10}],
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "spool_dir": "/data/spool",
    })


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _run(image: str, tmp: Path, config: str, *extra: str) -> str:
    video = _video(tmp / "cam.avi")
    return podman("run", "-d", "--network", "host", "--ipc", "host", *LIMITS, "-v", f"{video}:/data/cam.avi:ro",
                  "-e", f"EDGECV_APP_CONFIG={config}", *extra, image).stdout.strip()


def test_the_app_container_serves_readyz_against_a_local_triton(app_image: dict, triton_server, tmp_path: Path):
    port = free_port()
    start = time.monotonic()
    cid = _run(app_image["image"], tmp_path, _config(triton_server, port))
    try:
        code, body = 0, ""
        while code != 200 and time.monotonic() - start < 240:
            code, body = _get(f"http://127.0.0.1:{port}/readyz")
            if podman("inspect", "-f", "{{.State.Running}}", cid, check=False).stdout.strip() != "true":
                break
            time.sleep(1)
        logs = podman("logs", cid, check=False)
        assert code == 200, f"/readyz {code} {body}\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
        assert json.loads(body)["cameras_up"] == ["cam"]
        print(f"container ready in {time.monotonic() - start:.1f} s")
        assert "edgecv_stage_latency_seconds" in _get(f"http://127.0.0.1:{port}/metrics")[1]
    finally:
        podman("rm", "-f", cid, check=False)


def test_the_app_container_refuses_a_tampered_model(app_image: dict, triton_server, tmp_path: Path):
    """The app checks its artifact against the manifest when it loads its config: a changed file is named,
    and the app never serves; the Triton container's check (app.integrity) refuses with a metric."""
    ctx = app_image["context"]
    tampered = tmp_path / "nanodet-m.onnx"
    tampered.write_bytes((ctx / "app/registry/models/nanodet-m/nanodet-m.onnx").read_bytes()[:-1] + b"\0")
    port = free_port()
    cid = _run(app_image["image"], tmp_path, _config(triton_server, port),
               "-v", f"{tampered}:/opt/edgecv/registry/models/nanodet-m/nanodet-m.onnx:ro")
    try:
        deadline = time.monotonic() + 120
        while podman("inspect", "-f", "{{.State.Running}}", cid, check=False).stdout.strip() == "true":
            assert time.monotonic() < deadline, "the app kept running on a tampered model"
            assert _get(f"http://127.0.0.1:{port}/readyz")[0] != 200
            time.sleep(1)
        state = podman("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip()
        logs = podman("logs", cid, check=False)
        assert state != "0"
        assert "artifact.sha256: does not match the file" in logs.stdout + logs.stderr
    finally:
        podman("rm", "-f", cid, check=False)

    repo = tmp_path / "model-repository"
    shutil.copytree(ctx / "triton/model-repository", repo)
    shutil.copy2(tampered, repo / "nanodet-m/1/model.onnx")
    mport = free_port()
    cid = podman("run", "-d", "--network", "host", *LIMITS, "-v", f"{repo}:/models:ro", app_image["image"],
                 "python3", "-m", "app.integrity", "--repo", "/models", "--metrics-port", str(mport), "--",
                 "sleep", "600").stdout.strip()
    try:
        deadline, body = time.monotonic() + 120, ""
        while "edgecv_model_integrity_ok" not in body and time.monotonic() < deadline:
            body = _get(f"http://127.0.0.1:{mport}/metrics")[1]
            time.sleep(1)
        assert "edgecv_model_integrity_ok 0" in body
        assert "refusing to serve: /models/nanodet-m/1/model.onnx: sha256" in podman("logs", cid).stderr
    finally:
        podman("rm", "-f", cid, check=False)
