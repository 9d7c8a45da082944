"""Pipeline throughput and CPU per frame: today's path, the fused paths and a naive client, all in the same run.

    .venv/bin/python bench/pipeline.py [--seconds 6] [--streams 1,4,8|none] [--paths today,uint8,uint8+server,naive]
        [--batch-size 32] [--batch-models echo,nanodet] [--nanodet-frames 160]
        [--latency-out reports/bench-pipeline-latency.json] [--json-out figures.json]

What is measured: the whole app pipeline (preprocess into the batch buffer, batching, Triton round trip,
decode + NMS, tracking, rules) fed by synthetic cameras that always have a fresh 768x576 frame, against a
Triton model that answers at once: a python-backend model with the tensors the path serves that returns
NanoDet's real output for the sample frame (computed once with onnxruntime, by the very graph `edgecv triton
render` would serve), so decoding, tracking and rules see realistic detections while model compute is left out.

- today:        gRPC, system shared memory registered once, cross-camera batches up to 8 (2 ms deadline),
                2 requests in flight, float32 preprocessing and the numpy decoder in the app;
- uint8:        the same with `triton.fused_preprocess`: uint8 letterboxed frames written straight into
                shared memory, cast/normalise/layout in the graph;
- uint8+server: and `triton.server_decode`: decode + NMS in the graph, the app reads [batch, 100, 6]
                (the echo model leaves the server's decode cost out: see "decode + NMS" below);
- naive:        one HTTP request per frame, batch 1, tensors serialised in the bodies, one at a time.

Reported per stream count: frames/s, the ratio to naive, the pipeline's own CPU per frame (this process,
pinned to one core; Triton runs in its own process on the other cores) and its ratio to today's.
Goals: <= 1.0 ms CPU per frame at 8 streams, <= 2.0 ms at 1 stream, >= 6x naive at 8 streams.

Then, each against today's way in the same run:
- decode + NMS for a batch of 8: the numpy decoder against the same work as ONNX nodes on onnxruntime's CPU
  provider (the server-side decode pays where the server has a GPU, not on a CPU-only one);
- video decode of a 768x576 H.264 file: OpenCV's FFmpeg against the GStreamer reader's pipeline (software
  decoders both; NVDEC on a Jetson cannot be measured here);
- batch mode (`edgecv app batch`, batch 32, fused model) on H.264 files against the served model's own
  throughput (full batches back to back; goal >= 90 %) and against decoding the same files alone, for each
  model in --batch-models: `echo` (no model compute: its images/s exceed what this machine can decode, so
  the goal is out of reach by construction on a few CPU cores; the share of decode-only is the figure that
  says how much batch mode adds) and `nanodet` (the real NanoDet-m on Triton's CPU: the model bounds it here,
  so the share of its own throughput is the meaningful goal figure; its run uses --nanodet-frames frames).

Last, a short run of the real NanoDet (2 cameras at 10 fps, today's path) writes the per-stage p50/p95 latency
JSON that `edgecv gates --latency` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.config import AppConfig, Resolved  # noqa: E402
from app.metrics import Metrics  # noqa: E402
from app.pipeline.capture import FrameSlot  # noqa: E402
from app.pipeline.types import Frame  # noqa: E402
from app.runner import Pipeline  # noqa: E402
from fleet.repo import REPO_ROOT  # noqa: E402
from fleet.spec.manifest import DynamicBatching, ModelManifest, load_manifest  # noqa: E402

MANIFEST = REPO / "models" / "nanodet-m" / "manifest.yaml"

# A python-backend model that returns recorded outputs at once (tensors through DLPack: the wheel's stub
# cannot pass numpy 2 arrays directly; see fleet/triton/python_model.py).
ECHO_MODEL = '''
import ctypes, json, os
import numpy as np
import triton_python_backend_utils as pb_utils

_set_destructor = ctypes.pythonapi.PyCapsule_SetDestructor
_set_destructor.argtypes = [ctypes.py_object, ctypes.c_void_p]


def _tensor(name, array):
    capsule = array.__dlpack__()
    _set_destructor(capsule, None)  # the backend owns it now
    return pb_utils.Tensor.from_dlpack(name, capsule)


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.input = cfg["input"][0]["name"]
        recorded = np.load(os.path.join(args["model_repository"], args["model_version"], "outputs.npz"))
        batch = int(cfg["max_batch_size"])
        # One image's outputs repeated max_batch times; a request of n images gets the first n (contiguous).
        self.outputs = {o["name"]: np.ascontiguousarray(np.repeat(recorded[o["name"].replace(":", "_")], batch, 0))
                        for o in cfg["output"]}

    def execute(self, requests):
        responses = []
        for r in requests:
            n = pb_utils.get_input_tensor_by_name(r, self.input).shape()[0]
            responses.append(pb_utils.InferenceResponse([_tensor(k, v[:n]) for k, v in self.outputs.items()]))
        return responses
'''


def sample_video_path() -> Path:
    from fleet.local.rtsp import sample_video

    return Path(sample_video())


def sample_frame() -> np.ndarray:
    import cv2

    from fleet.local.rtsp import sample_video

    cap = cv2.VideoCapture(str(sample_video()))
    for _ in range(100):  # a frame with people in it
        ok, frame = cap.read()
    cap.release()
    if not ok:
        raise SystemExit("cannot read the sample video")
    return frame


def variant(manifest: ModelManifest, name: str, **triton_updates) -> ModelManifest:
    """`manifest` served under another name with its triton section updated (fused_preprocess, server_decode)."""
    return manifest.model_copy(update={"name": name, "triton": manifest.triton.model_copy(update=triton_updates)})


def echo_repository(manifests: list[ModelManifest], frame: np.ndarray, out: Path) -> Path:
    """A model repository serving each manifest's tensors (as served: uint8 in / fixed detections out where the
    manifest fuses) with NanoDet's real output for `frame`, computed once by the graph render would serve."""
    import onnxruntime as ort

    from app.pipeline.preprocess import Preprocessor
    from fleet.triton.fuse import fused_model, needs_fusing
    from fleet.triton.render import render_config

    for manifest in manifests:
        artifact = manifest.artifact.local_path(REPO_ROOT).read_bytes()
        graph = fused_model(manifest, artifact) if needs_fusing(manifest) else artifact
        pre = Preprocessor(manifest.served_input, 1)
        pre.write(0, frame)
        session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        names = [o.name for o in manifest.served_outputs]
        outputs = session.run(names, {manifest.served_input.name: pre.batch(1)})
        # Our client batches itself: no server-side queue delay for any path.
        served = manifest.model_copy(update={"triton": manifest.triton.model_copy(
            update={"dynamic_batching": DynamicBatching(max_queue_delay_us=0)})})
        version = out / manifest.name / "1"
        version.mkdir(parents=True, exist_ok=True)
        np.savez(version / "outputs.npz", **{n.replace(":", "_"): o for n, o in zip(names, outputs, strict=True)})
        (version / "model.py").write_text(ECHO_MODEL)
        (out / manifest.name / "config.pbtxt").write_text(render_config(served, "python"))
    return out


class SyntheticCamera:
    """A camera for benchmarks: `fps=None` always has a fresh frame; otherwise a thread delivers at fps."""

    def __init__(self, camera_id: str, image: np.ndarray, fps: float | None = None):
        self.camera_id, self.image, self.fps = camera_id, image, fps
        self.on_frame = None
        self.up, self.alive, self.last_error = True, True, None
        self.slot = FrameSlot()
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _frame(self) -> Frame:
        self._seq += 1
        return Frame(self.camera_id, self._seq, time.time(), self.image, time.monotonic())

    def take(self) -> Frame | None:
        return self._frame() if self.fps is None else self.slot.take()

    def start(self) -> SyntheticCamera:
        if self.fps is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        t0, k = time.monotonic(), 0
        while not self._stop.wait(max(0.0, t0 + k / self.fps - time.monotonic())):
            self.slot.put(self._frame())
            k += 1
            if self.on_frame:
                self.on_frame()

    def watch(self) -> bool:
        return self.up

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)


def resolved_for(manifest: ModelManifest, cameras: list[str], url: str, *, protocol: str, shm: str, batch: int,
                 inflight: int, delay_ms: float) -> Resolved:
    zone = {"name": "all", "polygon": [[0, 0], [10000, 0], [10000, 10000], [0, 10000]]}
    cfg = AppConfig.model_validate({
        "site_id": "bench", "device_id": "bench", "manifest": str(MANIFEST),
        "triton": {"url": url, "protocol": protocol, "shared_memory": shm, "max_inflight": inflight},
        "batching": {"max_batch": batch, "max_delay_ms": delay_ms},
        "cameras": [{"id": c, "url": "rtsp://bench/" + c, "zones": [zone], "rules": [
            {"name": "person", "kind": "zone_intrusion", "zone": "all", "classes": ["person"], "cooldown_s": 3600}]}
            for c in cameras],
    })
    return Resolved(cfg, manifest, batch, delay_ms / 1000.0)


def measure(resolved: Resolved, sources: list, warmup_s: float, seconds: float) -> dict:
    pipe = Pipeline(resolved, Metrics(), sources=sources)
    pipe.start(ready_timeout_s=60)
    try:
        end = time.monotonic() + warmup_s
        while time.monotonic() < end:
            pipe.step()
        f0, c0, t0 = pipe.frames_processed, time.process_time(), time.monotonic()
        end = t0 + seconds
        while time.monotonic() < end:
            pipe.step()
        frames, cpu, wall = pipe.frames_processed - f0, time.process_time() - c0, time.monotonic() - t0
    finally:
        pipe.drain()
    return {
        "fps": frames / wall,
        "cpu_ms_per_frame": 1000 * cpu / max(frames, 1),
        "dropped": pipe.frames_dropped,
        "events": pipe.events_sent,
        "latency": pipe.recorder.percentiles(),
        "pipeline": pipe,
    }


def decode_cost(manifest: ModelManifest, frame: np.ndarray, batch: int = 8, reps: int = 30) -> dict:
    """CPU ms per batch of today's numpy decoder against the same decode + NMS as ONNX nodes (the server-side
    decode) on onnxruntime's CPU provider, one thread each, on NanoDet's real outputs for `batch` frames."""
    import onnxruntime as ort

    from app.pipeline.postprocess import decoder_for
    from app.pipeline.preprocess import Preprocessor
    from fleet.triton.fuse import decode_model

    pre = Preprocessor(manifest.input, batch)
    infos = [pre.write(i, frame) for i in range(batch)]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    net = ort.InferenceSession(str(manifest.artifact.local_path(REPO_ROOT)), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in manifest.outputs]
    raw = dict(zip(names, net.run(names, {manifest.input.name: pre.batch(batch)}), strict=True))
    numpy_decode = decoder_for(manifest)
    graph = ort.InferenceSession(decode_model(manifest), opts, providers=["CPUExecutionProvider"])
    feed = {f"head/{n}": a for n, a in raw.items()}

    def cpu_ms(fn) -> float:
        fn()
        c0 = time.process_time()
        for _ in range(reps):
            fn()
        return 1000 * (time.process_time() - c0) / reps

    numpy_ms = cpu_ms(lambda: numpy_decode(raw, infos))
    onnx_ms = cpu_ms(lambda: graph.run(["detections"], feed))
    return {"batch": batch, "numpy_ms": numpy_ms, "onnx_cpu_ms": onnx_ms, "onnx_vs_numpy": onnx_ms / numpy_ms}


def h264_file(frame_source: Path, out: Path, frames: int = 300) -> Path:
    """An H.264 MP4 (what cameras record) of the sample video, made with Debian's ffmpeg."""
    import subprocess

    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(frame_source), "-frames:v", str(frames), "-c:v", "libx264",
                    "-preset", "veryfast", "-pix_fmt", "yuv420p", str(out)], check=True)
    return out


def decode_throughput(video: Path) -> dict:
    """Software decode of every frame to BGR arrays: OpenCV's FFmpeg (today) against GStreamer's appsink path."""
    import cv2

    from app.pipeline.capture_gst import GstSource, has_element

    def run(read) -> dict:
        c0, t0, n = time.process_time(), time.monotonic(), 0
        while read():
            n += 1
        wall, cpu = time.monotonic() - t0, time.process_time() - c0
        return {"frames": n, "fps": n / wall, "cpu_ms_per_frame": 1000 * cpu / max(n, 1)}

    cap = cv2.VideoCapture(str(video))
    opencv = run(lambda: cap.read()[0])
    cap.release()
    from app.pipeline.capture_gst import pipeline_description

    decoder = "avdec_h264" if has_element("avdec_h264") else "decodebin"
    src = GstSource(pipeline_description(False, paced=False), str(video))  # what the app's reader runs
    gstreamer = run(lambda: src.pull(5.0)[0] is not None)
    src.release()
    return {"opencv": opencv, "gstreamer": gstreamer, "decoder": decoder,
            "gst_vs_opencv_cpu": gstreamer["cpu_ms_per_frame"] / opencv["cpu_ms_per_frame"]}


def model_throughput(manifest: ModelManifest, url: str, frame: np.ndarray, batch: int, seconds: float) -> float:
    """The served model's own images/s: full batches of one preprocessed frame, back to back, 2 in flight."""
    from app.pipeline.infer import TritonInfer
    from app.pipeline.preprocess import Preprocessor

    infer = TritonInfer(manifest, url, max_batch=batch, max_inflight=2, shared_memory=True).start(60)
    try:
        pre = Preprocessor(manifest.served_input, 1)
        free = []
        while (slot := infer.acquire()) is not None:
            for i in range(batch):
                pre.write_to(slot.input[i], frame)
            free.append(slot)
        images, end, t0 = 0, time.monotonic() + seconds, time.monotonic()
        while time.monotonic() < end:
            while len(free) > 1:  # keep one slot back: at most max_inflight requests
                infer.submit(free.pop(), batch)
            for r in infer.results():
                images += r.n
                free.append(r.slot)
            time.sleep(0.0002)
        return images / (time.monotonic() - t0)
    finally:
        infer.close()


def parallel_decode(videos: list[Path], decoders: int) -> float:
    """Frames/s of decoding `videos` alone with `decoders` threads (OpenCV, as batch mode does): its ceiling here."""
    import queue

    import cv2

    todo: queue.Queue = queue.Queue()
    for v in videos:
        todo.put(v)
    counts: list[int] = []

    def work() -> None:
        n = 0
        while True:
            try:
                cap = cv2.VideoCapture(str(todo.get_nowait()))
            except queue.Empty:
                counts.append(n)
                return
            while cap.read()[0]:
                n += 1
            cap.release()

    threads = [threading.Thread(target=work) for _ in range(decoders)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


def batch_mode(manifest: ModelManifest, url: str, videos: list[Path], out: Path, batch: int) -> dict:
    """`edgecv app batch` on `videos` against the served model: frames/s end to end (decode included), and the
    load average while it ran (other work on the machine shares its cores)."""
    from app.batch import BatchRunner

    resolved = resolved_for(manifest, ["cam0"], url, protocol="grpc", shm="on", batch=batch, inflight=2,
                            delay_ms=0.0)
    c0 = time.process_time()
    summary = BatchRunner(resolved, out, batch=batch, decoders=min(4, os.cpu_count() or 1)).run(videos)
    return {"frames": summary.frames, "seconds": summary.seconds, "fps": summary.fps,
            "main_cpu_ms_per_frame": 1000 * (time.process_time() - c0) / max(summary.frames, 1),
            "load_avg_1m": os.getloadavg()[0]}


def batch_figures(manifest: ModelManifest, url: str, frame: np.ndarray, videos: list[Path], out: Path, batch: int,
                  seconds: float) -> dict:
    """Batch mode against the served model's own throughput and against decoding the same files alone, all three
    measured one after the other in this run (decode-only before and after batch mode, averaged: the load of
    the machine drifts)."""
    decoders = min(4, os.cpu_count() or 1)
    own = model_throughput(manifest, url, frame, batch, seconds)
    before = parallel_decode(videos, decoders)
    mode = batch_mode(manifest, url, videos, out, batch)
    ceiling = (before + parallel_decode(videos, decoders)) / 2
    return {"batch": batch, "model_images_per_s": own, **mode, "of_model": mode["fps"] / own,
            "decode_only_fps": ceiling, "of_decode": mode["fps"] / ceiling,
            "goal_reachable": ceiling >= 0.9 * own}


def print_batch(console, name: str, b: dict) -> None:
    console.print(f"batch mode, {name}, batch {b['batch']}: {b['fps']:.0f} frames/s end to end ({b['frames']} frames, "
                  f"load average {b['load_avg_1m']:.1f} on {os.cpu_count()} cores) against the model's own "
                  f"{b['model_images_per_s']:.0f} images/s: {100 * b['of_model']:.0f} % (goal >= 90 %); decoding the "
                  f"same files alone: {b['decode_only_fps']:.0f} frames/s (batch mode reaches "
                  f"{100 * b['of_decode']:.0f} % of that ceiling)")
    if not b["goal_reachable"]:
        console.print(f"  the {name} model's {b['model_images_per_s']:.0f} images/s exceed what this machine decodes "
                      f"({b['decode_only_fps']:.0f} frames/s): >= 90 % of it is unreachable by construction here; "
                      "the share of decode-only is the figure for batch mode's own cost")


def print_streams(console, results: dict, paths: dict, streams: list[int]) -> None:
    from rich.table import Table

    table = Table(title="pipeline throughput and CPU per frame (echo model: no model compute; one core)")
    for col in ("streams", "path", "frames/s", "x naive", "CPU ms/frame", "CPU vs today"):
        table.add_column(col, justify="right")
    for n, row in results["streams"].items():
        for name, r in row.items():
            table.add_row(str(n), name, f"{r['fps']:.1f}", f"{r['x_naive']:.2f}x", f"{r['cpu_ms_per_frame']:.2f}",
                          f"{r['cpu_vs_today']:.2f}")
    console.print(table)
    best = min((p for p in paths if p != "naive"),
               key=lambda p: results["streams"][max(streams)][p]["cpu_ms_per_frame"])
    top = results["streams"][max(streams)][best]
    one = results["streams"].get(1, {}).get(best)
    results["goals"] = {
        "best_path": best,
        "x_naive_at_max_streams": round(top["x_naive"], 2),
        "x_naive_goal_met": top["x_naive"] >= 6.0,
        "cpu_ms_per_frame_at_max_streams": round(top["cpu_ms_per_frame"], 3),
        "cpu_goal_at_max_streams_met": top["cpu_ms_per_frame"] <= 1.0,
        **({"cpu_ms_per_frame_at_1_stream": round(one["cpu_ms_per_frame"], 3),
            "cpu_goal_at_1_stream_met": one["cpu_ms_per_frame"] <= 2.0} if one else {}),
    }
    console.print(f"best path {best}: {top['x_naive']:.2f}x naive at {max(streams)} streams (goal >= 6x), "
                  f"{top['cpu_ms_per_frame']:.2f} ms CPU/frame (goal <= 1.0)"
                  + (f", {one['cpu_ms_per_frame']:.2f} ms at 1 stream (goal <= 2.0)" if one else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per configuration")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--streams", default="1,4,8", help="stream counts for the live paths ('none': skip them)")
    ap.add_argument("--paths", default="today,uint8,uint8+server,naive", help="which paths to measure (today and "
                    "naive always: the ratios are against them)")
    ap.add_argument("--batch-size", type=int, default=32, help="batch mode's images per request (0: skip batch mode)")
    ap.add_argument("--batch-videos", type=int, default=4, help="H.264 files of 300 frames for batch mode (echo)")
    ap.add_argument("--batch-models", default="echo,nanodet",
                    help="models batch mode runs against: echo (no compute), nanodet (real NanoDet-m, Triton on CPU)")
    ap.add_argument("--nanodet-frames", type=int, default=160,
                    help="frames batch mode runs through the real NanoDet (two files; the CPU model is slow)")
    ap.add_argument("--real-seconds", type=float, default=10.0, help="real-model run for the latency JSON (0: skip)")
    ap.add_argument("--latency-out", type=Path, default=REPO / "reports" / "bench-pipeline-latency.json")
    ap.add_argument("--json-out", type=Path, default=None, help="also write every figure here")
    args = ap.parse_args()

    from rich.console import Console

    from app.pipeline.latency import write_report
    from fleet.local.triton import triton
    from fleet.triton.render import render

    console = Console()
    manifest = load_manifest(MANIFEST)
    frame = sample_frame()
    streams = [] if args.streams == "none" else [int(s) for s in args.streams.split(",")]
    batch_models = {m for m in args.batch_models.split(",") if m}
    if batch_models - {"echo", "nanodet"}:
        raise SystemExit(f"--batch-models: unknown {', '.join(sorted(batch_models - {'echo', 'nanodet'}))} "
                         "(choose echo, nanodet)")
    results: dict = {"frame": list(frame.shape), "streams": {}}
    ours = {"protocol": "grpc", "shm": "on", "batch": 8, "inflight": 2, "delay_ms": 2.0}
    # name -> (served manifest, client settings); "today" is the path before fusing, "naive" the baseline.
    paths = {
        "today": (manifest, ours),
        "uint8": (variant(manifest, "nanodet-m-u8", fused_preprocess=True), ours),
        "uint8+server": (variant(manifest, "nanodet-m-u8-nms", fused_preprocess=True, server_decode=True), ours),
        "naive": (manifest, {"protocol": "http", "shm": "off", "batch": 1, "inflight": 1, "delay_ms": 0.0}),
    }
    paths = {k: v for k, v in paths.items() if k in args.paths.split(",") or k in ("today", "naive")}
    big = args.batch_size
    batch_model = variant(manifest, f"nanodet-m-u8-nms-b{big}", fused_preprocess=True, server_decode=True,
                          max_batch_size=max(big, 1),
                          dynamic_batching=DynamicBatching(preferred_batch_sizes=[max(big, 1)]))
    with tempfile.TemporaryDirectory(prefix="edgecv-bench-") as tmp:
        echo_batch = big and "echo" in batch_models
        served = list({m.name: m for m, _ in paths.values()}.values()) + ([batch_model] if echo_batch else [])
        repo = echo_repository(served, frame, Path(tmp) / "echo")
        with triton(repo, [m.name for m in served], workdir=Path(tmp) / "server-echo") as server:
            # The server (already started) keeps every core; this process (the pipeline) gets one.
            core = sorted(os.sched_getaffinity(0))[-1]
            os.sched_setaffinity(0, {core})
            console.print(f"pipeline pinned to CPU {core}; Triton (echo model) pid {server.proc.pid}; "
                          f"frames {frame.shape[1]}x{frame.shape[0]}")
            for n in streams:
                cams = [f"cam{i}" for i in range(n)]
                row = {}
                for name, (m, kw) in paths.items():
                    url = server.grpc_url if kw["protocol"] == "grpc" else server.http_url
                    r = measure(resolved_for(m, cams, url, **kw), [SyntheticCamera(c, frame) for c in cams],
                                args.warmup, args.seconds)
                    r.pop("pipeline")
                    row[name] = r
                    console.print(f"  {n} stream(s) {name:13s}: {r['fps']:7.1f} frames/s, "
                                  f"{r['cpu_ms_per_frame']:.2f} ms CPU/frame")
                for name in paths:
                    row[name]["x_naive"] = row[name]["fps"] / row["naive"]["fps"]
                    row[name]["cpu_vs_today"] = row[name]["cpu_ms_per_frame"] / row["today"]["cpu_ms_per_frame"]
                results["streams"][n] = row
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
            video = h264_file(sample_video_path(), Path(tmp) / "cam.mp4")
            results["decode"] = decode_throughput(video)
            if echo_batch:
                videos = []
                for i in range(args.batch_videos):
                    videos.append(Path(tmp) / f"rec{i}.mp4")
                    videos[-1].symlink_to(video)
                results["batch"] = batch_figures(batch_model, server.grpc_url, frame, videos, Path(tmp) / "batch-out",
                                                 big, args.seconds)
        results["decode_cost"] = decode_cost(manifest, frame)

        if streams:
            print_streams(console, results, paths, streams)
        d = results["decode"]
        console.print(f"video decode, 768x576 H.264, software ({d['decoder']}): OpenCV {d['opencv']['fps']:.0f} "
                      f"frames/s at {d['opencv']['cpu_ms_per_frame']:.2f} ms CPU/frame; GStreamer "
                      f"{d['gstreamer']['fps']:.0f} frames/s at {d['gstreamer']['cpu_ms_per_frame']:.2f} ms "
                      f"({d['gst_vs_opencv_cpu']:.2f}x today's CPU; NVDEC on a Jetson takes the decode off the CPU)")
        c = results["decode_cost"]
        console.print(f"decode + NMS, batch {c['batch']}, one CPU thread: numpy {c['numpy_ms']:.2f} ms, as ONNX nodes "
                      f"on onnxruntime CPU {c['onnx_cpu_ms']:.2f} ms ({c['onnx_vs_numpy']:.2f}x)")
        if "batch" in results:
            print_batch(console, "echo", results["batch"])

        nanodet_batch = big and "nanodet" in batch_models and args.nanodet_frames > 0
        if args.real_seconds > 0 or nanodet_batch:
            real_repo = Path(tmp) / "real"
            real = ([manifest] if args.real_seconds > 0 else []) + ([batch_model] if nanodet_batch else [])
            for m in real:
                render(m, real_repo, "python")
            with triton(real_repo, [m.name for m in real], workdir=Path(tmp) / "server-real") as server:
                if nanodet_batch:
                    # Two shorter files: NanoDet on these CPU cores does tens of images/s, not thousands.
                    short = h264_file(sample_video_path(), Path(tmp) / "short.mp4", max(1, args.nanodet_frames // 2))
                    videos = [Path(tmp) / "nano0.mp4", Path(tmp) / "nano1.mp4"]
                    for v in videos:
                        v.symlink_to(short)
                    results["batch_nanodet_cpu"] = batch_figures(batch_model, server.grpc_url, frame, videos,
                                                                 Path(tmp) / "batch-nanodet", big, args.seconds)
                    print_batch(console, "NanoDet-m (Triton on CPU)", results["batch_nanodet_cpu"])
                if args.real_seconds > 0:
                    cams = ["cam0", "cam1"]
                    r = measure(
                        resolved_for(manifest, cams, server.grpc_url, protocol="grpc", shm="on", batch=4, inflight=2,
                                     delay_ms=20.0),
                        [SyntheticCamera(c, frame, fps=10) for c in cams], 2.0, args.real_seconds,
                    )
            if args.real_seconds > 0:
                report = r["pipeline"].recorder.report()
                write_report(report, args.latency_out)
                results["real_model"] = {"fps": r["fps"], "latency": report["stages"]}
                console.print(f"real NanoDet, 2 cameras at 10 fps: {r['fps']:.1f} frames/s; latency JSON -> "
                              f"{args.latency_out}")
                console.print(json.dumps(report["stages"]))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
