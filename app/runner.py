"""The device pipeline: capture -> preprocess -> batch -> infer -> postprocess -> track -> rules -> alerts.

One loop thread does the work in the middle (`Pipeline.run`); threads live only at the edges: one reader
per camera, the inference workers and Triton monitor, the alert sender, the HTTP status server.

Each turn of the loop:
1. finished inference batches are handled in submission order (the tracker needs frames in time order):
   decode + NMS for the whole batch, then per frame tracking, rules and alert publishing;
2. the newest frame of each camera is letterboxed straight into the batch buffer that goes to Triton
   (in shared memory when Triton is local);
3. the batch is sent when full or when its oldest frame has waited max_delay;
4. the loop sleeps until a frame or a result arrives, or the batch deadline.

While Triton is not ready, frames are dropped as they arrive (counted: reason "triton_down"); a failed
request drops its frames (reason "inference_error"). Per-stage latencies go to the
edgecv_stage_latency_seconds histograms and to a LatencyRecorder for the p50/p95 report.

Every handled frame goes to the pipeline's sinks (app.pipeline.ports.FrameSink, adapters in app.sinks): the
alert publisher, the evidence feed (frames into the pre-roll rings, events into packages) and the review
sampler (flagged frames to the review client's bounded queue); none blocks the loop. The drift monitor is
checked every drift.check_interval_s (an alarm is published on edgecv/<site>/<device>/drift).

Faults (what keeps a device without anyone on site running):
- shutdown is bounded by drain_timeout_s (default 10 s): batches in flight are finished, then evidence and
  alerts are flushed, and only then is inference closed (its calls have deadlines of their own);
- every background thread survives one turn's exception (logged, counted in edgecv_thread_errors_total,
  backed off); a thread that dies anyway turns /healthz to 503 "dead thread" and stops the systemd
  watchdog pings (WATCHDOG=1, sent from the loop only while every thread is alive), so systemd restarts us;
- a camera whose frames stop is marked down by its stall watchdog (frame age), with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from app.config import Resolved, camera_source, config_path
from app.drift.monitors import DriftMonitor
from app.drift.sampling import ReviewSampler
from app.metrics import PIPELINE_STAGES, Metrics
from app.pipeline.batcher import Batcher
from app.pipeline.capture import CameraReader
from app.pipeline.infer import BufferSlot, Result, TritonInfer
from app.pipeline.latency import LatencyRecorder
from app.pipeline.ports import FrameSink, FrameSource, Handled
from app.pipeline.postprocess import decoder_for
from app.pipeline.preprocess import LetterboxInfo, Preprocessor
from app.pipeline.rules import RuleEngine
from app.pipeline.tracker import Tracker
from app.pipeline.types import Detections, Event, Frame
from app.review_client import ReviewClient
from app.sdnotify import Notifier

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Pending:
    """A frame on its way through a batch."""

    frame: Frame
    info: LetterboxInfo
    taken: float  # monotonic time it left the camera slot


class Pipeline:
    """Runs the app from a resolved config. `sources` (app.pipeline.ports.FrameSource) default to one
    CameraReader per configured camera. `publisher` (app.alerts.publisher.AlertPublisher), `evidence`
    (app.evidence.feed.EvidenceFeeder) and `review` (with `sampler`) are optional and become sinks, in that
    order, before any extra `sinks`; without a publisher events are only counted.
    """

    def __init__(
        self,
        resolved: Resolved,
        metrics: Metrics | None = None,
        *,
        sources: Sequence[FrameSource] | None = None,
        infer: TritonInfer | None = None,
        publisher=None,
        recorder: LatencyRecorder | None = None,
        evidence=None,
        review: ReviewClient | None = None,
        sampler: ReviewSampler | None = None,
        sinks: Sequence[FrameSink] = (),
    ):
        self.resolved = resolved
        cfg = resolved.config
        self.manifest = resolved.manifest
        self.metrics = metrics or Metrics()
        self.recorder = recorder or LatencyRecorder()
        self._wake = threading.Event()
        self.sources = list(sources) if sources is not None else [
            _reader(cam)(
                cam.id, camera_source(resolved, cam), is_stream=cam.is_stream, fps=cam.fps,
                open_timeout_ms=cam.open_timeout_ms, read_timeout_ms=cam.read_timeout_ms,
                metrics=self.metrics, on_frame=self._wake.set,
            )
            for cam in cfg.cameras
        ]
        for s in self.sources:
            if getattr(s, "on_frame", None) is None:
                s.on_frame = self._wake.set
        self.infer = infer or TritonInfer(
            self.manifest, cfg.triton.url, protocol=cfg.triton.protocol, model_name=resolved.model_name,
            max_batch=resolved.max_batch, max_inflight=cfg.triton.max_inflight,
            shared_memory=cfg.triton.use_shared_memory, request_timeout_s=cfg.triton.request_timeout_s,
            control_timeout_s=cfg.triton.control_timeout_s, metrics=self.metrics,
        )
        self.infer.on_result = self._wake.set
        self.publisher = publisher
        self.batcher: Batcher[Pending] = Batcher(resolved.max_batch, resolved.max_delay_s)
        self.preprocessor = Preprocessor(self.manifest.served_input, 1)
        self.decode = decoder_for(self.manifest)
        self.classes = list(self.manifest.classes)
        cams = {c.id: c for c in cfg.cameras}
        self.trackers = {s.camera_id: Tracker(cfg.tracker) for s in self.sources}
        self.rules = {
            s.camera_id: RuleEngine.from_config(
                cams[s.camera_id].rules_config if s.camera_id in cams else _no_rules(), self.classes,
                site_id=cfg.site_id, device_id=cfg.device_id, camera_id=s.camera_id, model_ref=self.manifest.ref,
            )
            for s in self.sources
        }
        for engine in self.rules.values():
            engine.metrics = self.metrics
        self._slot: BufferSlot | None = None  # the batch buffer being filled
        self._next_submit = 0  # sequence numbers keep results in submission order
        self._next_handle = 0
        self._done: dict[int, Result] = {}
        self._last_t: dict[str, float] = {}
        self._fps_window: dict[str, deque] = {s.camera_id: deque() for s in self.sources}
        self._rr = 0  # round-robin start so no camera is always last into a batch
        self.last_tick = time.monotonic()
        self._gauges_at = 0.0
        self.processed_per_camera = {s.camera_id: 0 for s in self.sources}
        self.dropped_per_camera: dict[str, int] = {}  # by the pipeline (Triton away); stale frames: reader.dropped
        self.frames_processed = 0
        self.frames_dropped = 0
        self.events_sent = 0
        self.detections_per_class: dict[str, int] = {}
        self.events: list[Event] = []  # the newest events, for the demo's summary
        self._stop = threading.Event()
        self.started = False
        # Labelled metric children looked up once (labels() costs a dict lookup under a lock per call).
        m = self.metrics
        self._stage_hist = {stage: m.stage_latency.labels(stage) for stage in PIPELINE_STAGES}
        self._processed = {s.camera_id: m.frames_processed.labels(s.camera_id) for s in self.sources}
        self._fps_gauge = {s.camera_id: m.camera_fps.labels(s.camera_id) for s in self.sources}
        self._class_counter = [m.predictions.labels(name) for name in self.classes]
        self.evidence = evidence  # an app.evidence.feed.EvidenceFeeder, or None
        if evidence is not None:  # clips show every frame the camera saw, also those replaced before inference
            for s in self.sources:
                if hasattr(s, "on_stale") and s.on_stale is None:
                    s.on_stale = evidence.add_seen
        self.review = review
        self.sampler = sampler or (ReviewSampler(cfg.sampling) if review is not None else None)
        self.sinks: list[FrameSink] = self._sinks(sinks)
        self.drain_timeout_s = cfg.drain_timeout_s
        self.threads: dict[str, Callable[[], bool]] = {}  # name -> is it alive: background threads /healthz watches
        self.notifier = Notifier()
        self.disk_checks: dict[str, Callable[[], bool]] = {}  # what -> True while that disk is full
        self._pinged = 0.0
        self.drift = self._drift_monitor()
        self._drift_every = cfg.drift.check_interval_s if cfg.drift else 1.0
        self._drift_at = 0.0
        self.drift_events: list[dict] = []
        self._reviews: deque[tuple[int, int]] = deque()  # from the review client's thread, applied by the loop

    def _sinks(self, extra: Sequence[FrameSink]) -> list[FrameSink]:
        from app.sinks import AlertSink, EvidenceSink, ReviewSink

        out: list[FrameSink] = []
        if self.publisher is not None:
            out.append(AlertSink(self.publisher))
        if self.evidence is not None:
            out.append(EvidenceSink(self.evidence))
        if self.review is not None:
            out.append(ReviewSink(self.review, self.sampler))
        return out + list(extra)

    def note_review(self, reviewed: int, corrected: int) -> None:
        """The review service's verdicts (thread-safe: the loop feeds them to the drift monitor)."""
        self._reviews.append((reviewed, corrected))

    def _drift_monitor(self) -> DriftMonitor | None:
        reference = self.resolved.drift_reference
        if reference is None:
            return None
        drift_cfg = self.resolved.config.drift
        return DriftMonitor(reference, len(self.classes), drift_cfg.monitor_config if drift_cfg else None,
                            self.metrics, on_drift=self._on_drift)

    def _on_drift(self, kind: str, value: float, threshold: float) -> None:
        cfg = self.resolved.config
        payload = {
            "schema": 1, "kind": kind, "value": round(float(value), 4), "threshold": threshold,
            "model": self.manifest.ref, "time": time.time(), "site": cfg.site_id, "device": cfg.device_id,
            "stats": {k: (None if v is None else round(float(v), 4)) for k, v in self.drift.stats().items()},
        }
        log.warning("drift: %s = %.3f over its threshold %.3f", kind, value, threshold)
        self.metrics.drift_events.labels(kind).inc()
        self.drift_events.append(payload)
        if self.publisher is not None:
            self.publisher.publish("drift", payload)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, ready_timeout_s: float | None = None) -> Pipeline:
        """Wait for Triton's model (registering shared memory), then start the cameras."""
        m = self.metrics
        m.restarts.inc()
        m.model_info.labels(self.manifest.name, self.manifest.version).set(1)
        timeout = self.resolved.config.triton.ready_timeout_s if ready_timeout_s is None else ready_timeout_s
        self.infer.start(timeout, cancel=self._stop, on_wait=self._ping_watchdog)
        if self.evidence is not None and not self.evidence.is_alive():
            self.evidence.start()
        for s in self.sources:
            s.start()
        self.started = True
        self.notifier.ready()
        return self

    def stop(self) -> None:
        """Ask run() to finish (safe from a signal handler or another thread)."""
        self._stop.set()
        self._wake.set()

    def run(self, duration_s: float | None = None, on_tick=None) -> None:
        """Loop until stop() (or duration_s), then drain: in-flight batches are finished and handled."""
        if not self.started:
            self.start()
        end = None if duration_s is None else time.monotonic() + duration_s
        try:
            while not self._stop.is_set() and (end is None or time.monotonic() < end):
                self.step()
                if on_tick is not None:
                    on_tick(self)
        finally:
            self.drain()

    def drain(self, timeout_s: float | None = None) -> None:
        """Stop the cameras, send what is batched, handle the requests in flight (their events reach the
        sinks), flush the sinks (alerts, evidence, review), and only then close inference: all of it within
        timeout_s (default: the config's drain_timeout_s), each step given a share of what is left."""
        self.notifier.stopping()
        t0 = time.monotonic()
        deadline = t0 + (self.drain_timeout_s if timeout_s is None else timeout_s)

        def left(share: float = 1.0) -> float:
            return max(0.0, (deadline - time.monotonic()) * share)

        for s in self.sources:
            s.stop(min(2.0, left(0.2)))
        if len(self.batcher) and self.infer.ready:
            self._submit()
        until = time.monotonic() + min(left(0.4), self.infer.request_timeout_s + 0.5)
        while (self._next_handle < self._next_submit) and time.monotonic() < until:
            self._handle_results()
            self._wake.wait(0.05)
            self._wake.clear()
        if self.drift is not None:
            self.drift.check()
        for k, sink in enumerate(self.sinks):  # pending events are packaged with the post-roll recorded so far
            try:
                sink.close(left(0.8 / (len(self.sinks) - k)))
            except Exception:
                log.exception("closing the %s sink failed", sink.name)
        self._slot = None
        self._done.clear()
        self.infer.close(min(left(0.5), 2.0))
        log.info("drained in %.1fs", time.monotonic() - t0)

    # --- one turn of the loop ------------------------------------------------------------------------

    def step(self, idle_s: float = 0.1) -> None:
        self.last_tick = time.monotonic()
        self._ping_watchdog()
        self._handle_results()
        if not self.infer.ready:
            self._drop_incoming("triton_down")
        else:
            self._fill()
            if self.batcher.due():
                self._submit()
        self._update_gauges()
        if self.drift is not None and self.last_tick - self._drift_at >= self._drift_every:
            self._drift_at = self.last_tick
            while self._reviews:
                self.drift.observe_review(*self._reviews.popleft())
            self.drift.check()
        left = self.batcher.time_left()
        self._wake.wait(idle_s if left is None else min(idle_s, left))
        self._wake.clear()

    def _fill(self) -> None:
        if self._slot is None:
            self._slot = self.infer.acquire()
            if self._slot is None:
                return  # every buffer is busy: frames wait in their camera slot (newest wins)
        n = len(self.sources)
        for k in range(n):
            if self.batcher.full:
                break
            source = self.sources[(self._rr + k) % n]
            frame = source.take()
            if frame is None:
                continue
            taken = time.monotonic()
            self._observe("capture", taken - frame.monotonic)
            info = self.preprocessor.write_to(self._slot.input[len(self.batcher)], frame.image)
            now = time.monotonic()
            self._observe("preprocess", now - taken)
            self.batcher.add(Pending(frame, info, taken), now)
        self._rr = (self._rr + 1) % max(1, n)

    def _submit(self) -> None:
        batch = self.batcher.take()
        for b in batch:
            self._observe("batch_wait", b.waited)
        self.metrics.batch_size.observe(len(batch))
        slot, self._slot = self._slot, None
        self.infer.submit(slot, len(batch), (self._next_submit, [b.item for b in batch]))
        self._next_submit += 1

    def _handle_results(self) -> None:
        for r in self.infer.results():
            self._done[r.context[0]] = r
        while self._next_handle in self._done:
            result = self._done.pop(self._next_handle)
            self._next_handle += 1
            try:
                self._handle(result)
            finally:
                self.infer.release(result.slot)

    def _handle(self, result: Result) -> None:
        pending: list[Pending] = result.context[1]
        if result.error is not None:
            for p in pending:
                self._drop(p.frame.camera_id, "inference_error")
            return
        for _ in pending:
            self._observe("inference", result.seconds)
        t0 = time.monotonic()
        try:
            dets = self.decode(result.outputs, [p.info for p in pending])
        except (KeyError, ValueError) as exc:  # outputs not as the manifest says: drop, count, keep going
            log.error("cannot decode the model's outputs: %s", exc)
            for p in pending:
                self._drop(p.frame.camera_id, "postprocess_error")
            return
        per_frame = (time.monotonic() - t0) / len(pending)
        for p, d in zip(pending, dets, strict=True):
            self._observe("postprocess", per_frame)
            self._dispatch(p.frame, d)

    def _dispatch(self, frame: Frame, dets: Detections) -> None:
        t0 = time.monotonic()
        cam = frame.camera_id
        t = max(frame.captured_at, self._last_t.get(cam, 0.0))  # a wall-clock step back must not break tracking
        self._last_t[cam] = t
        tracked = self.trackers[cam].update(dets, t)
        events = self.rules[cam].process(tracked, t, frame.seq)
        item = Handled(frame, dets, tracked, events, self.drift is not None and self.drift.alarming)
        for sink in self.sinks:
            sink.handle(item)
        if events:
            self.events_sent += len(events)
            self.events.extend(events)
            del self.events[:-1000]
        now = time.monotonic()
        self._observe("dispatch", now - t0)
        self._observe("total", now - frame.monotonic)
        m = self.metrics
        self._processed[cam].inc()
        self.frames_processed += 1
        self.processed_per_camera[cam] += 1
        self._fps_window[cam].append(now)
        if len(dets):
            for cid, count in zip(*np.unique(dets.class_ids, return_counts=True), strict=True):
                cid, count = int(cid), int(count)
                if 0 <= cid < len(self.classes):  # the decoders only emit the manifest's classes
                    self._class_counter[cid].inc(count)
                    name = self.classes[cid]
                    self.detections_per_class[name] = self.detections_per_class.get(name, 0) + count
            for s in dets.scores:
                m.confidence.observe(float(s))
        if self.drift is not None:
            self.drift.observe_frame(dets.scores, dets.class_ids)

    # --- bookkeeping ---------------------------------------------------------------------------------

    def _drop_incoming(self, reason: str) -> None:
        for s in self.sources:
            frame = s.take()
            if frame is not None:
                self._drop(frame.camera_id, reason)
        for b in self.batcher.take():  # frames batched before Triton went away
            self._drop(b.item.frame.camera_id, reason)
        if self._slot is not None:
            self.infer.release(self._slot)
            self._slot = None

    def _drop(self, camera_id: str, reason: str) -> None:
        self.frames_dropped += 1
        self.dropped_per_camera[camera_id] = self.dropped_per_camera.get(camera_id, 0) + 1
        self.metrics.frames_dropped.labels(camera_id, reason).inc()

    def _observe(self, stage: str, seconds: float) -> None:
        self._stage_hist[stage].observe(seconds)
        self.recorder.record(stage, seconds)

    def _update_gauges(self, window_s: float = 2.0) -> None:
        now = time.monotonic()
        if now - self._gauges_at < 0.25:  # gauges are scraped every few seconds: no need to set them per turn
            return
        self._gauges_at = now
        m = self.metrics
        for cam, times in self._fps_window.items():
            while times and now - times[0] > window_s:
                times.popleft()
            self._fps_gauge[cam].set(len(times) / window_s)
        m.queue_depth.labels("batch").set(len(self.batcher))
        m.queue_depth.labels("results").set(len(self._done))
        for s in self.sources:  # the per-camera stall watchdogs
            s.watch()

    def fps(self, window_s: float = 2.0) -> dict[str, float]:
        """Frames per second processed per camera over the last window_s."""
        now = time.monotonic()
        return {cam: sum(1 for t in list(times) if now - t <= window_s) / window_s
                for cam, times in self._fps_window.items()}

    def dead_threads(self) -> list[str]:
        alive = {f"camera-{s.camera_id}": (lambda s=s: s.alive) for s in self.sources}
        alive["triton-monitor"] = lambda: self.infer.alive
        alive.update(self.threads)
        return sorted(name for name, is_alive in alive.items() if not is_alive())

    def _ping_watchdog(self) -> None:
        """WATCHDOG=1 while the loop turns and every thread lives: systemd restarts a process that stops."""
        every = self.notifier.watchdog_interval_s
        now = time.monotonic()
        if every is None or now - self._pinged < min(every, 5.0):
            return
        self._pinged = now
        dead = self.dead_threads()
        if dead:
            log.error("not pinging the systemd watchdog: dead thread(s) %s", ", ".join(dead))
        else:
            self.notifier.watchdog()

    def status(self) -> dict:
        """For /healthz and /readyz."""
        disk_full = []
        if self.publisher is not None and self.publisher.disk_full:
            disk_full.append("spool")
        return {
            "loop_alive": time.monotonic() - self.last_tick < 10.0,
            "triton_ready": bool(self.infer.ready),
            "cameras": {s.camera_id: bool(s.up) for s in self.sources},
            "camera_errors": {s.camera_id: s.last_error for s in self.sources if not s.up and s.last_error},
            "dead_threads": self.dead_threads(),
            "disk_full": disk_full + [w for w, check in self.disk_checks.items() if check()],
        }


def _reader(cam):
    """The reader class for a camera's capture backend (GStreamer's with its decoder element bound)."""
    if cam.capture.backend != "gstreamer":
        return CameraReader
    import functools

    from app.pipeline.capture_gst import GstCameraReader

    return functools.partial(GstCameraReader, decoder=cam.capture.decoder, codec=cam.capture.codec)


def _no_rules():
    from app.pipeline.rules import RulesConfig

    return RulesConfig()


def mqtt_publisher(resolved: Resolved, metrics: Metrics | None = None, make_room=None):
    """The alert publisher for the config's mqtt: section (TLS files relative to the config file)."""
    from app.alerts.publisher import AlertPublisher, tls_context

    cfg, m = resolved.config, resolved.config.mqtt
    tls = None
    if m.use_tls:
        files = (config_path(resolved, f) if f else None for f in (m.tls_ca, m.tls_cert, m.tls_key))
        tls = tls_context(*files, verify_hostname=m.tls_verify_hostname)
    return AlertPublisher(
        m.host, m.port, cfg.site_id, cfg.device_id, cfg.spool_dir, window=m.window,
        username=m.username, password=m.password, tls=tls, metrics=metrics, make_room=make_room,
    )


class AppRunner:
    """The whole app process: the pipeline, the MQTT publisher (when configured) and the status endpoint."""

    def __init__(self, resolved: Resolved, metrics: Metrics | None = None, **pipeline_kw):
        from app.server import StatusServer

        cfg = resolved.config
        self.metrics = metrics or Metrics()
        self._spool_dir = cfg.spool_dir
        publisher = pipeline_kw.pop("publisher", None)
        if publisher is None and cfg.mqtt is not None:
            publisher = mqtt_publisher(resolved, self.metrics, make_room=self._make_room)
        self.store = self.uploader = None
        self._running = False
        if cfg.evidence is not None and "evidence" not in pipeline_kw:
            pipeline_kw["evidence"] = self._evidence(resolved)
        if cfg.review is not None and "review" not in pipeline_kw:
            pipeline_kw["review"] = self._review(resolved)
        self.pipeline = p = Pipeline(resolved, self.metrics, publisher=publisher, **pipeline_kw)
        if p.review is not None and p.drift is not None:
            p.review.on_corrections = p.note_review
        # Background threads whose death /healthz and the systemd watchdog must notice.
        if publisher is not None:
            p.threads["alerts-sender"] = lambda: publisher.alive
        if p.evidence is not None:
            p.threads["evidence-feed"] = lambda: p.evidence.ident is None or p.evidence.closed or p.evidence.is_alive()
        for t in self._threads():
            p.threads[t.name] = lambda t=t: t.is_alive() or not self._running
        if self.store is not None:
            p.disk_checks["evidence"] = lambda: self.store.admission_reason == "free_space"
        self.server = StatusServer(self.metrics.registry, self.pipeline.status, cfg.metrics.host, cfg.metrics.port)
        self.health = None
        if cfg.health.enabled:
            from app.health.exporter import HealthExporter

            h = cfg.health
            self.health = HealthExporter(self.metrics.registry, source=h.source, mounts=h.mounts, upstream=h.upstream,
                                         probe_interval_s=h.probe_interval_s)

    def _evidence(self, resolved: Resolved):
        from app.evidence.feed import EvidenceFeeder
        from app.evidence.packager import EvidencePackager
        from app.evidence.store import EvidenceStore, Uploader

        ev = resolved.config.evidence
        admit = None
        if ev.store is not None:
            self.store = EvidenceStore(ev.dir, ev.store.bucket, resolved.evidence_prefix, _s3_factory(ev.store),
                                       ev.disk_budget_bytes, self.metrics, min_free_bytes=ev.min_free_bytes,
                                       min_free_percent=ev.min_free_percent)
            self.uploader = Uploader(self.store, interval_s=ev.store.upload_interval_s)
            admit = self.store.admission
        packager = EvidencePackager(ev.packager_config, list(resolved.manifest.classes), self.metrics, admit=admit)
        return EvidenceFeeder(packager)

    def _review(self, resolved: Resolved) -> ReviewClient:
        import os

        cfg = resolved.config
        rc = cfg.review
        return ReviewClient(
            rc.url, os.environ.get(rc.token_env, ""), site_id=cfg.site_id, device_id=cfg.device_id,
            model_ref=resolved.manifest.ref, class_names=list(resolved.manifest.classes), metrics=self.metrics,
            timeout_s=rc.timeout_s, queue_size=rc.queue_size, correction_poll_s=rc.correction_poll_s,
        )

    def _make_room(self) -> int:
        """The alert spool's disk is full: shed evidence on the same file system (alerts matter more)."""
        if self.store is None or not _same_disk(self._spool_dir, self.store.root):
            return 0
        return self.store.shed()

    def _threads(self) -> list[threading.Thread]:
        return [t for t in (self.uploader, self.pipeline.review) if t is not None]  # the pipeline runs the feed

    def start(self, ready_timeout_s: float | None = None) -> AppRunner:
        """Serve /healthz and /readyz at once (readyz says 503 until Triton is ready), then start the pipeline."""
        self.server.start()
        if self.health is not None:
            self.health.start()
        if self.pipeline.publisher is not None:
            self.pipeline.publisher.start()
        for t in self._threads():
            t.start()
        self._running = True
        try:
            self.pipeline.start(ready_timeout_s)
        except BaseException:
            self.close()
            raise
        return self

    def run(self, duration_s: float | None = None, on_tick=None) -> None:
        try:
            self.pipeline.run(duration_s, on_tick)  # drains the sinks (alerts, evidence, review) too
        finally:
            self._running = False
            self.server.stop()
            self._stop_background()

    def _stop_background(self, upload_s: float | None = None) -> None:
        """The uploader gets a last pass of at most upload_s (default: evidence.store.shutdown_upload_s) even
        if its thread died; the review client (a sink) was stopped by the drain."""
        self._running = False
        p = self.pipeline
        if upload_s is None:
            ev = self.pipeline.resolved.config.evidence
            upload_s = ev.store.shutdown_upload_s if ev is not None and ev.store is not None else 0.0
        if self.health is not None:
            self.health.stop()
            self.health = None
        if p.review is not None and p.review.is_alive():
            p.review.stop(0)
        if self.uploader is not None:
            self.uploader.stopping.set()  # not joined: it may be stuck on the store; the last pass is bounded
            last = threading.Thread(target=self.store.upload_pending, name="evidence-last-upload", daemon=True)
            last.start()
            last.join(upload_s)

    def stop(self) -> None:
        self.pipeline.stop()

    def close(self) -> None:
        self.server.stop()
        for sink in self.pipeline.sinks:
            sink.close(2.0)
        self._stop_background(upload_s=0)

    def summary(self) -> dict:
        p = self.pipeline
        return {
            "frames_processed": p.frames_processed,
            "frames_dropped": p.frames_dropped,
            "events": p.events_sent,
            "detections_per_class": dict(sorted(p.detections_per_class.items())),
            "latency": p.recorder.percentiles(),
            **({"evidence": {"events": p.evidence.events, "written": p.evidence.written}}
               if p.evidence is not None else {}),
            **({"drift": p.drift.stats(), "drift_events": len(p.drift_events)} if p.drift is not None else {}),
            **({"review_sent": p.review.sent, "review_dropped": p.review.dropped} if p.review is not None else {}),
        }


def _same_disk(a, b) -> bool:
    import os

    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _s3_factory(store):
    """boto3 S3 clients for the evidence store; short timeouts so an outage cannot hold the uploader long."""

    def make():
        import boto3
        from botocore.config import Config

        session = boto3.Session(profile_name=store.profile) if store.profile else boto3.Session()
        return session.client("s3", endpoint_url=store.endpoint_url, region_name=store.region,
                              config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2}))

    return make
