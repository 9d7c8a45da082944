"""How long a Triton takes to load a model, from a cold and from a warm TensorRT engine cache (for the gate report).

    times = load_times("127.0.0.1:8000", "nanodet-m", engine_cache_dir=Path("/var/cache/edgecv/trt-engines/..."))
    times.cold_s, times.warm_s, times.within_budget  # budget: 30 s for the warm load (a device restart)

The first load with the TensorRT accelerator builds the engine (minutes on a Jetson); with the engine cache
(`triton.tensorrt.engine_cache_dir`, rendered per model version) every later load reads it back. Measured on a
running Triton with explicit model control: unload, then time `load_model` (which returns once the model is
loaded) until the model reports ready. The cold load empties the cache directory first, so it must be the
server's own directory (same host). Without a cache directory both loads are plain loads.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LOAD_BUDGET_S = 30.0


@dataclass(frozen=True)
class LoadTimes:
    model: str
    cold_s: float  # engine cache emptied first (the first start on a device)
    warm_s: float  # the cache as the cold load left it (every later start)
    engine_cache_dir: str | None
    budget_s: float = LOAD_BUDGET_S

    @property
    def within_budget(self) -> bool:
        return self.warm_s <= self.budget_s

    def as_dict(self) -> dict:
        return {**asdict(self), "within_budget": self.within_budget}


def model_load_seconds(http_url: str, model: str, timeout_s: float = 900.0) -> float:
    """Unload `model`, then the seconds from load_model until it is ready (explicit model control)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url, connection_timeout=timeout_s, network_timeout=timeout_s)
    try:
        client.unload_model(model)
        _wait(lambda: not client.is_model_ready(model), timeout_s, f"{model} did not unload")
        t0 = time.monotonic()
        client.load_model(model)
        _wait(lambda: client.is_model_ready(model), timeout_s, f"{model} did not become ready")
        return time.monotonic() - t0
    finally:
        client.close()


def load_times(http_url: str, model: str, engine_cache_dir: Path | None = None,
               timeout_s: float = 900.0) -> LoadTimes:
    """A cold load (engine cache emptied) then a warm one; the model is loaded again when this returns."""
    if engine_cache_dir is not None and Path(engine_cache_dir).is_dir():
        for entry in Path(engine_cache_dir).iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    cold = model_load_seconds(http_url, model, timeout_s)
    warm = model_load_seconds(http_url, model, timeout_s)
    return LoadTimes(model, round(cold, 3), round(warm, 3), str(engine_cache_dir) if engine_cache_dir else None)


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s:.0f}s")
        time.sleep(0.05)
