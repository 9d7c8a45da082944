"""Inference through Triton: tritonclient (gRPC by default, HTTP selectable), batches of preprocessed frames.

Buffers: `slots` batch buffers, each an input tensor (max_batch, *input shape) and one array per output.
With system shared memory (Triton on this host) they are views into two regions (inputs, outputs) that are
created and registered with Triton once at start, not per request; the pipeline preprocesses straight into
`slot.input` and the outputs land in `slot.outputs` without any (de)serialisation. Without shared memory
the same arrays travel in the request and response bodies.

Requests run on a pool of `max_inflight` worker threads (the bound on requests in flight); results come
back through `results()`, in completion order, and the pipeline releases each slot when done with it.

Every call to Triton has a deadline (gRPC client_timeout; the HTTP client's connection and network
timeouts): inference takes request_timeout_s, the control calls (model ready, shared-memory register and
unregister) take control_timeout_s, so a frozen server (SIGSTOP) can hold neither start-up nor shutdown.

Triton going away (restart, crash, a freeze): failed requests come back as errors (the pipeline drops and
counts the frames), `ready` turns False (health degraded) and a monitor thread polls until the model is ready
again, then registers the shared memory the server lacks (a new server knows nothing of it; a thawed one
still holds it and is left alone) and turns `ready` back on.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException
from tritonclient.utils import shared_memory as shm

from fleet.spec.manifest import ModelManifest

log = logging.getLogger(__name__)


@dataclass
class BufferSlot:
    """One batch's tensors. `input[i]` is where the pipeline writes frame i of the batch."""

    index: int
    input: np.ndarray
    outputs: dict[str, np.ndarray]
    input_offset: int = 0
    output_offsets: dict[str, int] = field(default_factory=dict)


@dataclass
class Result:
    slot: BufferSlot
    n: int  # images in the batch
    context: Any  # what the pipeline passed to submit()
    outputs: dict[str, np.ndarray] | None  # name -> (n, ...) arrays; None on error
    error: str | None
    seconds: float  # request round trip


def _dtype(spec) -> np.dtype:
    return np.dtype(spec.dtype.numpy)


class TritonInfer:
    """See the module docstring. `on_result` is called (from a worker thread) after each result is queued."""

    def __init__(
        self,
        manifest: ModelManifest,
        url: str,
        *,
        protocol: str = "grpc",
        model_name: str | None = None,
        max_batch: int = 1,
        max_inflight: int = 2,
        shared_memory: bool = False,
        request_timeout_s: float = 5.0,
        control_timeout_s: float | None = None,
        poll_s: float = 1.0,
        metrics=None,
        on_result: Callable[[], None] | None = None,
    ):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be grpc or http, not {protocol!r}")
        self.manifest, self.url, self.protocol = manifest, url, protocol
        self.model_name = model_name or manifest.name
        self.max_batch, self.max_inflight = max_batch, max_inflight
        self.request_timeout_s, self.poll_s = request_timeout_s, poll_s
        self.control_timeout_s = control_timeout_s if control_timeout_s is not None else min(request_timeout_s, 2.0)
        self.metrics, self.on_result = metrics, on_result
        # The tensors as served: uint8 frames when preprocessing is fused into the graph, one fixed-size
        # detections output when it decodes on the server (the artifact's own tensors otherwise).
        self.input_spec = manifest.served_input
        self.output_specs = manifest.served_outputs
        # Outputs of variable shape cannot be given a fixed place in shared memory.
        fixed_outputs = all(d > 0 for o in self.output_specs for d in o.shape)
        self.shared_memory = shared_memory and fixed_outputs
        self.ready = False
        self.errors = 0
        self._module = _client_module(protocol)
        self._local = threading.local()
        self._results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self._free: list[BufferSlot] = []
        self._slots_made = False
        self._lock = threading.Lock()
        self._inflight = 0  # submitted and not finished (queued for a worker or running)
        self._running = 0  # on the wire now: what the in-flight gauge shows
        self._regions: list[tuple[str, str, int, Any]] = []  # (triton name, key, size, handle)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._monitor: threading.Thread | None = None

    # --- buffers -----------------------------------------------------------------------------------

    def _make_slots(self, count: int) -> None:
        in_shape = (self.max_batch, *self.input_spec.shape)
        in_bytes = int(np.prod(in_shape)) * _dtype(self.input_spec).itemsize
        out_shapes = {o.name: (self.max_batch, *o.shape) for o in self.output_specs}
        out_bytes = {o.name: int(np.prod(out_shapes[o.name])) * _dtype(o).itemsize for o in self.output_specs}
        if not self.shared_memory:
            for i in range(count):
                outs = {o.name: np.zeros(out_shapes[o.name], _dtype(o)) for o in self.output_specs}
                self._free.append(BufferSlot(i, np.zeros(in_shape, _dtype(self.input_spec)), outs))
            return
        remove_stale_regions()
        tag = f"{SHM_PREFIX}{os.getpid()}_{id(self) & 0xFFFFFF:x}"
        per_slot_out = sum(out_bytes.values())
        in_region = self._create_region(f"{tag}_in", in_bytes * count)
        out_region = self._create_region(f"{tag}_out", per_slot_out * count)
        for i in range(count):
            in_off = i * in_bytes
            inp = shm.get_contents_as_numpy(in_region, _dtype(self.input_spec), in_shape, in_off)
            outs, offs, off = {}, {}, i * per_slot_out
            for o in self.output_specs:
                outs[o.name] = shm.get_contents_as_numpy(out_region, _dtype(o), out_shapes[o.name], off)
                offs[o.name] = off
                off += out_bytes[o.name]
            self._free.append(BufferSlot(i, inp, outs, in_off, offs))

    def _create_region(self, name: str, size: int):
        handle = shm.create_shared_memory_region(name, f"/{name}", size, create_only=True)
        self._regions.append((name, f"/{name}", size, handle))
        return handle

    @property
    def input_region(self) -> str | None:
        return self._regions[0][0] if self._regions else None

    @property
    def output_region(self) -> str | None:
        return self._regions[1][0] if self._regions else None

    def acquire(self) -> BufferSlot | None:
        """A free batch buffer, or None while every one is in flight or waiting to be released."""
        with self._lock:
            return self._free.pop() if self._free else None

    def release(self, slot: BufferSlot) -> None:
        with self._lock:
            self._free.append(slot)

    @property
    def inflight(self) -> int:
        return self._inflight

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, ready_timeout_s: float = 120.0, cancel: threading.Event | None = None,
              on_wait: Callable[[], None] | None = None) -> TritonInfer:
        """Wait until the model is ready (TimeoutError after ready_timeout_s; InterruptedError when `cancel`
        is set meanwhile; `on_wait()` each poll, e.g. to keep a watchdog fed), then register shared memory."""
        if not self._slots_made:
            self._make_slots(self.max_inflight + 1)
            self._slots_made = True
        deadline = time.monotonic() + ready_timeout_s
        while not self._ready_and_registered():
            if cancel is not None and cancel.is_set():
                self.close(0)
                raise InterruptedError("stopped while waiting for Triton")
            if time.monotonic() > deadline:
                self.close(0)
                raise TimeoutError(f"model '{self.model_name}' not ready on {self.protocol}://{self.url} "
                                   f"after {ready_timeout_s:.0f}s")
            if on_wait is not None:
                on_wait()
            time.sleep(0.2)
        self._set_ready(True)
        self._pool = ThreadPoolExecutor(self.max_inflight, thread_name_prefix="infer")
        self._monitor = threading.Thread(target=self._watch, name="triton-monitor", daemon=True)
        self._monitor.start()
        return self

    def _ready_and_registered(self) -> bool:
        if not self._check_ready():
            return False
        try:
            self._register()
        except Exception as exc:
            if _kind(exc) == "server":
                self.close(0)
                raise RuntimeError(f"Triton at {self.url} refused our system shared memory ({_describe(exc)}); "
                                   "shared_memory: on needs Triton on this host") from exc
            self._drop_client()  # timed out or went away between the two calls: keep waiting
            return False
        return True

    def close(self, drain_timeout_s: float = 5.0) -> None:
        """Wait for requests in flight (up to drain_timeout_s), stop, unregister and free shared memory.
        Bounded: every call here has a deadline; requests still running after drain_timeout_s are left
        to their own deadline (their results are not read any more)."""
        deadline = time.monotonic() + drain_timeout_s
        while self._inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        self._wake.set()
        if self._pool is not None:
            self._pool.shutdown(wait=not self._inflight, cancel_futures=True)
        if self._monitor is not None:
            self._monitor.join(max(0.1, deadline - time.monotonic()) + self.control_timeout_s)
        with self._lock:
            self._free = []  # no views into the regions may outlive them
        if self._regions:
            try:
                for name, *_ in self._regions:
                    self._client().unregister_system_shared_memory(name, **self._deadline(self.control_timeout_s))
            except Exception as exc:  # the server may be gone or frozen; the regions are ours to free regardless
                log.debug("unregister shared memory: %s", exc)
            self._drop_client()
            for *_, handle in self._regions:
                shm.destroy_shared_memory_region(handle)
            self._regions = []

    # --- requests ----------------------------------------------------------------------------------

    def submit(self, slot: BufferSlot, n: int, context: Any = None) -> None:
        """Send the first n images of slot.input; the result (or error) comes back through results()."""
        if self._pool is None:
            raise RuntimeError("start() first")
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"batch of {n}, max_batch is {self.max_batch}")
        with self._lock:
            self._inflight += 1
            queued = self._inflight - self._running
        if self.metrics is not None:
            self.metrics.inference_queued.set(queued)
        self._pool.submit(self._run, slot, n, context)

    def results(self) -> list[Result]:
        out = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def infer_now(self, slot: BufferSlot, n: int) -> dict[str, np.ndarray]:
        """One synchronous request (for tools and tests); raises on error."""
        return self._request(slot, n)

    def _run(self, slot: BufferSlot, n: int, context: Any) -> None:
        self._count_running(+1)
        t0 = time.perf_counter()
        try:
            outputs, error = self._request(slot, n), None
        except Exception as exc:  # any failure: the frames are dropped, Triton's health re-checked
            outputs, error = None, _describe(exc)
            self._failed(exc)
        self._count_running(-1, finished=True)
        self._results.put(Result(slot, n, context, outputs, error, time.perf_counter() - t0))
        if self.on_result is not None:
            self.on_result()

    def _count_running(self, delta: int, finished: bool = False) -> None:
        # The gauge counts requests on the wire (at most max_inflight), not those waiting for a worker.
        with self._lock:
            self._running += delta
            if finished:
                self._inflight -= 1
            running, queued = self._running, self._inflight - self._running
        if self.metrics is not None:
            self.metrics.inflight.set(running)
            self.metrics.inference_queued.set(queued)

    def _deadline(self, seconds: float) -> dict:
        """The per-call deadline argument (gRPC); the HTTP client has its timeouts set at construction."""
        return {"client_timeout": seconds} if self.protocol == "grpc" else {}

    def _request(self, slot: BufferSlot, n: int) -> dict[str, np.ndarray]:
        mod = self._module
        spec = self.input_spec
        inp = mod.InferInput(spec.name, [n, *spec.shape], spec.dtype.value)
        if self.shared_memory:
            nbytes = slot.input[:n].nbytes
            inp.set_shared_memory(self.input_region, nbytes, slot.input_offset)
            outs = []
            for o in self.output_specs:
                req = mod.InferRequestedOutput(o.name)
                req.set_shared_memory(self.output_region, slot.outputs[o.name][:n].nbytes, slot.output_offsets[o.name])
                outs.append(req)
        else:
            if self.protocol == "http":
                inp.set_data_from_numpy(slot.input[:n], binary_data=True)
                outs = [mod.InferRequestedOutput(o.name, binary_data=True) for o in self.output_specs]
            else:
                inp.set_data_from_numpy(slot.input[:n])
                outs = [mod.InferRequestedOutput(o.name) for o in self.output_specs]
        response = self._client().infer(self.model_name, [inp], outputs=outs, **self._deadline(self.request_timeout_s))
        if self.shared_memory:
            return {o.name: slot.outputs[o.name][:n] for o in self.output_specs}
        result = {}
        for o in self.output_specs:
            arr = response.as_numpy(o.name)
            if arr is None:
                raise InferenceServerException(f"response lacks output '{o.name}'")
            result[o.name] = arr
        return result

    # --- health ------------------------------------------------------------------------------------

    def _client(self):
        # The HTTP client is not thread-safe: every thread gets its own (gRPC's too, for symmetry).
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                client = self._module.InferenceServerClient(self.url)
            else:
                client = self._module.InferenceServerClient(self.url, connection_timeout=self.control_timeout_s,
                                                            network_timeout=self.request_timeout_s)
            self._local.client = client
        return client

    def _check_ready(self) -> bool:
        try:
            return bool(self._client().is_model_ready(self.model_name, **self._deadline(self.control_timeout_s)))
        except Exception:  # connection refused, server starting: simply not ready
            self._drop_client()  # a fresh connection next time
            return False

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _register(self) -> None:
        """Register the regions the server does not hold as ours. A region it still holds is left alone:
        a request that timed out on our side may still be executing there, and Triton (2.45 at least) unmaps
        an unregistered region under it (SIGSEGV in the Python backend, seen after a SIGSTOP/SIGCONT)."""
        client = self._client()
        deadline = self._deadline(self.control_timeout_s)
        held = self._registered_regions(client, deadline)
        for name, key, size, _ in self._regions:
            if held.get(name) == (key, size):
                continue
            if name in held:  # same name, other key or size: not ours to use as it is
                client.unregister_system_shared_memory(name, **deadline)
            client.register_system_shared_memory(name, key, size, **deadline)

    def _registered_regions(self, client, deadline: dict) -> dict[str, tuple[str, int]]:
        """name -> (key, byte size) of the system shared memory regions the server has registered."""
        status = client.get_system_shared_memory_status(**deadline)
        if self.protocol == "grpc":
            return {name: (r.key, int(r.byte_size)) for name, r in status.regions.items()}
        return {r["name"]: (r["key"], int(r["byte_size"])) for r in status}

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self.metrics is not None:
            self.metrics.triton_errors.labels(_kind(exc)).inc()
        log.warning("inference failed: %s", _describe(exc))
        self._drop_client()
        self._set_ready(False)
        self._wake.set()

    @property
    def alive(self) -> bool:
        """False once started and the monitor thread has died."""
        return self._monitor is None or self._monitor.is_alive() or self._stop.is_set()

    def _watch(self) -> None:
        """Poll the model's readiness; after an outage re-register shared memory before turning ready."""
        while not self._stop.is_set():
            self._wake.wait(self.poll_s if self.ready else min(self.poll_s, 0.25))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._watch_once()
            except Exception:  # the monitor must outlive any one failure
                log.exception("triton monitor: check failed; retrying")
                if self.metrics is not None:
                    self.metrics.thread_errors.labels("triton-monitor").inc()
                self._stop.wait(self.poll_s)

    def _watch_once(self) -> None:
        ok = self._check_ready()
        if ok and not self.ready:
            try:
                self._register()
            except Exception as exc:
                log.warning("re-registering shared memory failed: %s", _describe(exc))
                self._drop_client()
                ok = False
        if ok != self.ready:
            log.warning("triton %s", "ready again" if ok else "not ready")
            self._set_ready(ok)

    def _set_ready(self, up: bool) -> None:
        self.ready = up
        if self.metrics is not None:
            self.metrics.triton_up.set(1 if up else 0)


SHM_PREFIX = "edgecv_app_"  # /dev/shm/edgecv_app_<pid>_<id>_{in,out}


def remove_stale_regions(shm_dir: str = "/dev/shm") -> list[str]:
    """Unlink regions left by app processes that are gone (killed before they could free them)."""
    removed = []
    for path in glob.glob(f"{shm_dir}/{SHM_PREFIX}*"):
        pid = os.path.basename(path).removeprefix(SHM_PREFIX).split("_", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _client_module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as mod
    else:
        import tritonclient.http as mod
    return mod


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _kind(exc: Exception) -> str:
    text = str(exc).lower()
    if "deadline" in text or "timed out" in text or "timeout" in text:
        return "timeout"
    if "unavailable" in text or "connect" in text or "refused" in text or "broken pipe" in text:
        return "unavailable"
    return "server"

