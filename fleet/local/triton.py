"""Triton Inference Server from the nvidia-pytriton wheel, on 127.0.0.1 free ports, serving a model repository.

The wheel ships `tritonserver`, its libraries and the python backend with one stub per CPython minor version.
Like pytriton itself, we copy the python backend into the server's work dir with the stub that matches the
running interpreter, and give the server an environment where the stub finds:
- its shared libraries (LD_LIBRARY_PATH: the interpreter's own lib dir first, then the wheel's libs) — the
  stub links the system libpython3.11, and another build of 3.11 on the path fails in odd ways;
- numpy and onnxruntime for the rendered model.py (PYTHONPATH: this interpreter's site-packages).

    with triton(repo, models=["nanodet-m"]) as server:
        httpclient.InferenceServerClient(server.http_url) ...; grpcclient...(server.grpc_url)

`kill()` then `start()` brings it back on the same ports (fault tests).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from fleet.local.procs import Service, free_port, http_ok


def pytriton_dist() -> tuple[Path, Path]:
    """(the wheel's tritonserver dir, its bundled libs dir); a clear error when the wheel is missing."""
    try:
        import pytriton
    except ImportError as exc:
        raise RuntimeError(
            "the local Triton server comes from the nvidia-pytriton wheel: `pip install -e .[server]`"
        ) from exc
    root = Path(pytriton.__file__).resolve().parent
    dist = root / "tritonserver"
    libs = root.parent / "nvidia_pytriton.libs"
    if not (dist / "bin" / "tritonserver").is_file():
        raise RuntimeError(f"no tritonserver binary in {dist}/bin (broken nvidia-pytriton install?)")
    return dist, libs


def prepare_backends(dest: Path) -> Path:
    """<dest>/backends/python: the wheel's python backend plus the stub for this interpreter's version."""
    dist, _ = pytriton_dist()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"nvidia-pytriton has no python-backend stub for Python {version} ({stub})")
    backends = dest / "backends"
    shutil.rmtree(backends, ignore_errors=True)
    shutil.copytree(dist / "backends", backends)
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    return backends


def server_env() -> dict[str, str]:
    _, libs = pytriton_dist()
    lib_dirs = [sysconfig.get_config_var("LIBDIR") or "", str(libs), os.environ.get("LD_LIBRARY_PATH", "")]
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], os.environ.get("PYTHONPATH", "")]
    return {
        "LD_LIBRARY_PATH": ":".join(dict.fromkeys(p for p in lib_dirs if p)),
        "PYTHONPATH": ":".join(dict.fromkeys(p for p in site if p)),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }


class TritonService(Service):
    """A local tritonserver; ready when the server and every named model are ready."""

    def __init__(
        self,
        model_repository: Path,
        models: Sequence[str] = (),
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        workdir: Path | None = None,
        start_timeout: float = 90.0,
        log_verbose: int = 0,
    ):
        self.model_repository = Path(model_repository).resolve()
        self.models = list(models)
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_verbose = log_verbose
        workdir = Path(workdir or tempfile.mkdtemp(prefix="edgecv-triton-"))
        self.backends = prepare_backends(workdir)
        self.shm_prefix = ""
        super().__init__(
            "tritonserver",
            [],
            self.http_port,
            workdir=workdir,
            env=server_env(),
            ready=self._ready,
            start_timeout=start_timeout,
        )

    @property
    def http_url(self) -> str:
        """host:port, as tritonclient.http wants it."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _argv(self) -> list[str]:
        dist, _ = pytriton_dist()
        argv = [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.backends}",
            f"--cache-directory={dist / 'caches'}",
            "--model-control-mode=explicit",
            *[f"--load-model={m}" for m in (self.models or ["*"])],
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=5",
            f"--log-verbose={self.log_verbose}",
            # Unique shared-memory names: other servers on this host (parallel tests) must not collide.
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=16777216",
        ]
        return argv

    def start(self) -> TritonService:
        if self.proc and self.proc.poll() is None:
            return self
        self._remove_shm()  # a killed server leaves its regions behind
        self.shm_prefix = f"edgecv_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.argv = self._argv()
        super().start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)
        self._remove_shm()

    def kill(self) -> None:
        super().kill()
        self._remove_shm()

    def _remove_shm(self) -> None:
        if self.shm_prefix:
            for path in glob.glob(f"/dev/shm/{self.shm_prefix}*"):
                Path(path).unlink(missing_ok=True)

    def _ready(self) -> bool:
        base = f"http://{self.http_url}/v2"
        return http_ok(f"{base}/health/ready") and all(http_ok(f"{base}/models/{m}/ready") for m in self.models)


def triton(model_repository: str | Path, models: Sequence[str] = (), **kw) -> TritonService:
    """A local Triton serving `model_repository` (explicit model control: `models`, or every model when empty).

    Not started until used: `with triton(repo, ["nanodet-m"]) as server: ...` or `.start()` / `.stop()`.
    """
    return TritonService(Path(model_repository), models, **kw)
