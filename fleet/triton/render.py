"""`edgecv triton render`: a Triton model repository for a model manifest.

    <out>/<model name>/config.pbtxt      inputs, outputs, max batch, dynamic batching, instance group
    <out>/<model name>/1/model.onnx      the artifact, sha256-checked against the manifest while it is copied; with
                                         triton.fused_preprocess / server_decode the wrapper graph generated
                                         around it (fleet/triton/fuse.py; the registry's artifact is untouched)
    <out>/<model name>/1/model.py        --backend python only: serves the same ONNX through onnxruntime

Backends: `onnxruntime` (production on Jetson) and `python` (the local Triton from the nvidia-pytriton wheel,
which carries only the python backend). Every file is written to a temporary name and renamed into place, the
config last, so a server never sees a half-written file; a wrong artifact replaces nothing.

KIND_GPU on the onnxruntime backend gets the TensorRT execution accelerator (FP16 by default) with an engine
cache directory, so a device builds each engine once rather than at every start; `triton.tensorrt.enabled:
false` in the manifest leaves plain CUDA.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from fleet.repo import REPO_ROOT
from fleet.spec.manifest import ModelManifest
from fleet.triton.fuse import FuseError, fused_model, needs_fusing

Backend = Literal["onnxruntime", "python"]
BACKENDS = ("onnxruntime", "python")
VERSION = "1"  # Triton versions are integers; the manifest's semver travels in the config parameters
PYTHON_MODEL = Path(__file__).with_name("python_model.py")


class RenderError(ValueError):
    """The manifest cannot be rendered (artifact missing, wrong checksum, unsupported format)."""


def model_config(manifest: ModelManifest, backend: Backend) -> mc.ModelConfig:
    t = manifest.triton
    cfg = mc.ModelConfig(name=manifest.name, backend=backend, max_batch_size=t.max_batch_size)
    # max_batch_size > 0: Triton adds the (dynamic) batch dimension in front of these dims.
    inp = manifest.served_input
    cfg.input.add(name=inp.name, data_type=_dtype(inp.dtype.value), dims=list(inp.shape))
    for out in manifest.served_outputs:
        cfg.output.add(name=out.name, data_type=_dtype(out.dtype.value), dims=list(out.shape))
    db = cfg.dynamic_batching
    db.preferred_batch_size.extend(t.dynamic_batching.preferred_batch_sizes)
    db.max_queue_delay_microseconds = t.dynamic_batching.max_queue_delay_us
    # The python backend runs onnxruntime on the CPU: a GPU instance group would need a GPU to load.
    kind = "KIND_CPU" if backend == "python" else t.instances.kind
    cfg.instance_group.add(count=t.instances.count, kind=mc.ModelInstanceGroup.Kind.Value(kind))
    cfg.parameters["manifest"].string_value = manifest.ref
    cfg.parameters["artifact_sha256"].string_value = manifest.artifact.sha256
    if kind == "KIND_GPU" and backend == "onnxruntime" and t.tensorrt.enabled:
        _tensorrt(cfg, manifest)
    if backend == "onnxruntime":
        cfg.default_model_filename = "model.onnx"
    else:
        cfg.parameters["onnx_file"].string_value = "model.onnx"
    return cfg


def _tensorrt(cfg: mc.ModelConfig, manifest: ModelManifest) -> None:
    trt = manifest.triton.tensorrt
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    acc.parameters["precision_mode"] = trt.precision
    acc.parameters["max_workspace_size_bytes"] = str(trt.max_workspace_mb << 20)
    acc.parameters["trt_engine_cache_enable"] = "1"
    # One directory per model version: an engine is only valid for the graph (and TensorRT) it was built from.
    acc.parameters["trt_engine_cache_path"] = f"{trt.engine_cache_dir.rstrip('/')}/{manifest.name}/{manifest.version}"


def _dtype(name: str) -> int:
    return mc.DataType.Value(f"TYPE_{name}")


def render_config(manifest: ModelManifest, backend: Backend) -> str:
    return text_format.MessageToString(model_config(manifest, backend))


def artifact_path(manifest: ModelManifest, root: Path = REPO_ROOT) -> Path:
    art = manifest.artifact
    if art.format != "onnx":
        raise RenderError(f"{manifest.ref}: artifact format {art.format!r}; only onnx can be rendered here")
    if not art.is_local:
        raise RenderError(f"{manifest.ref}: artifact {art.uri} is not local; fetch it and pass its path")
    return art.local_path(root)


def _atomic_write(dest: Path, data: bytes | str) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; a server running as another user must read it
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, dest)


def _read_checked(src: Path, sha256: str, size: int) -> bytes:
    if not src.is_file():
        raise RenderError(f"artifact not found: {src}")
    data = src.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256 or len(data) != size:
        raise RenderError(
            f"artifact {src} does not match the manifest: sha256 {digest} size {len(data)}, "
            f"manifest says sha256 {sha256} size {size}; nothing was replaced"
        )
    return data


def _copy_checked(src: Path, dest: Path, sha256: str, size: int) -> None:
    """Copy src to dest while hashing; dest is replaced only when the bytes match the manifest."""
    if not src.is_file():
        raise RenderError(f"artifact not found: {src}")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.fchmod(fd, 0o644)
    try:
        digest, n = hashlib.sha256(), 0
        with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
            while block := fin.read(1 << 20):
                digest.update(block)
                fout.write(block)
                n += len(block)
        if digest.hexdigest() != sha256 or n != size:
            raise RenderError(
                f"artifact {src} does not match the manifest: sha256 {digest.hexdigest()} size {n}, "
                f"manifest says sha256 {sha256} size {size}; nothing was replaced"
            )
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def render(
    manifest: ModelManifest,
    out: str | Path,
    backend: Backend = "onnxruntime",
    artifact: Path | None = None,
    root: Path = REPO_ROOT,
) -> Path:
    """Write (or update in place) the Triton model directory for `manifest` under `out`; returns it."""
    if backend not in BACKENDS:
        raise RenderError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    src = Path(artifact) if artifact else artifact_path(manifest, root)
    model_dir = Path(out) / manifest.name
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    if needs_fusing(manifest):
        try:
            wrapped = fused_model(manifest, _read_checked(src, manifest.artifact.sha256, manifest.artifact.size))
        except FuseError as exc:
            raise RenderError(str(exc)) from exc
        _atomic_write(version_dir / "model.onnx", wrapped)
    else:
        _copy_checked(src, version_dir / "model.onnx", manifest.artifact.sha256, manifest.artifact.size)
    if backend == "python":
        _atomic_write(version_dir / "model.py", PYTHON_MODEL.read_bytes())
    else:
        (version_dir / "model.py").unlink(missing_ok=True)  # left over from a python-backend render
    _atomic_write(model_dir / "config.pbtxt", render_config(manifest, backend))
    return model_dir
