"""`edgecv triton render`: a Triton model repository for a model manifest.

    <out>/<model name>/config.pbtxt      inputs, outputs, max batch, dynamic batching, instance group
    <out>/<model name>/1/model.onnx      the artifact, sha256-checked against the manifest while it is copied
    <out>/<model name>/1/model.py        --backend python only: serves the same ONNX through onnxruntime

Backends: `onnxruntime` (production on Jetson) and `python` (the local Triton from the nvidia-pytriton wheel,
which carries only the python backend). Every file is written to a temporary name and renamed into place, the
config last, so a server never sees a half-written file; a wrong artifact replaces nothing.
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
    cfg.input.add(
        name=manifest.input.name, data_type=_dtype(manifest.input.dtype.value), dims=list(manifest.input.shape)
    )
    for out in manifest.outputs:
        cfg.output.add(name=out.name, data_type=_dtype(out.dtype.value), dims=list(out.shape))
    db = cfg.dynamic_batching
    db.preferred_batch_size.extend(t.dynamic_batching.preferred_batch_sizes)
    db.max_queue_delay_microseconds = t.dynamic_batching.max_queue_delay_us
    # The python backend runs onnxruntime on the CPU: a GPU instance group would need a GPU to load.
    kind = "KIND_CPU" if backend == "python" else t.instances.kind
    cfg.instance_group.add(count=t.instances.count, kind=mc.ModelInstanceGroup.Kind.Value(kind))
    cfg.parameters["manifest"].string_value = manifest.ref
    if backend == "onnxruntime":
        cfg.default_model_filename = "model.onnx"
    else:
        cfg.parameters["onnx_file"].string_value = "model.onnx"
    return cfg


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
    _copy_checked(src, version_dir / "model.onnx", manifest.artifact.sha256, manifest.artifact.size)
    if backend == "python":
        _atomic_write(version_dir / "model.py", PYTHON_MODEL.read_bytes())
    else:
        (version_dir / "model.py").unlink(missing_ok=True)  # left over from a python-backend render
    _atomic_write(model_dir / "config.pbtxt", render_config(manifest, backend))
    return model_dir
