"""Where `edgecv eval` runs the artifact: Triton serving the rendered model repository (what a device runs),
or onnxruntime in-process for CPU CI. Both take the batch the device's Preprocessor fills and return the
named outputs the device's decoder reads; tests/fleet/gates/test_eval.py shows they agree.

Both load the artifact from bytes whose sha256 was checked, never from a path read again later.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from fleet.spec.manifest import ModelManifest
from fleet.triton.load_time import LOAD_BUDGET_S, model_load_seconds  # noqa: F401 (LOAD_BUDGET_S re-exported)


class Runtime(Protocol):
    name: str
    load_seconds: float  # the time to load the model (in Triton: an explicit load of the rendered repository)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, manifest: ModelManifest, artifact: bytes):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        start = time.perf_counter()
        self.session = ort.InferenceSession(artifact, opts, providers=["CPUExecutionProvider"])
        self.load_seconds = time.perf_counter() - start
        self.input = manifest.input.name
        self.outputs = [o.name for o in manifest.outputs]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, {self.input: batch}), strict=True))

    def close(self) -> None:
        pass


class TritonRuntime:
    """A local Triton (fleet.local.triton) serving the repository `edgecv triton render` writes for the
    manifest. Load time: the model is unloaded once the server is up, then loaded again and timed
    (Triton's explicit model control; the same load a device does when its container starts)."""

    name = "triton"

    def __init__(self, manifest: ModelManifest, artifact: bytes, workdir: Path | None = None):
        import tritonclient.http as http

        if manifest.triton.fused_preprocess or manifest.triton.server_decode:
            # The device then sends uint8 frames / reads fused detections: not what this evaluation drives.
            raise ValueError(f"{manifest.ref}: triton.fused_preprocess/server_decode: evaluate the artifact with "
                             "--runtime onnxruntime")

        from fleet.local.triton import triton
        from fleet.triton.render import render

        self._tmp = tempfile.TemporaryDirectory(prefix="edgecv-eval-", dir=workdir)
        tmp = Path(self._tmp.name)
        source = tmp / "artifact.onnx"
        source.write_bytes(artifact)
        render(manifest, tmp / "models", "python", artifact=source)  # render checks the sha256 again
        self.server = triton(tmp / "models", [manifest.name], workdir=tmp / "server", start_timeout=120)
        self.server.start()
        try:
            self.client = http.InferenceServerClient(self.server.http_url, network_timeout=120.0)
            self.model = manifest.name
            self.load_seconds = model_load_seconds(self.server.http_url, self.model, timeout_s=120.0)
            if not self.client.is_model_ready(self.model):
                raise RuntimeError(f"Triton did not load {self.model}:\n{self.server.log_tail()}")
        except BaseException:
            self.close()
            raise
        self._http = http
        self.input = manifest.input
        self.outputs = [o.name for o in manifest.outputs]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        inp = self._http.InferInput(self.input.name, list(batch.shape), self.input.dtype.value)
        inp.set_data_from_numpy(np.ascontiguousarray(batch))
        outs = [self._http.InferRequestedOutput(n) for n in self.outputs]
        result = self.client.infer(self.model, [inp], outputs=outs)
        return {n: result.as_numpy(n) for n in self.outputs}

    def close(self) -> None:
        try:
            self.server.stop()
        finally:
            self._tmp.cleanup()


RUNTIMES = {"triton": TritonRuntime, "onnxruntime": OnnxRuntime}
