"""Every Prometheus metric the device exports, in one place.

Dashboards, alert rules and rollout analyses refer to these names; tests check that they
only use names defined here. Stage names follow the manifest's latency budget table.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets (seconds) dense around the budget's 10-213 ms range.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.213, 0.3, 0.5, 1.0, 2.5)
CONFIDENCE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

# Pipeline stages with a histogram each (edgecv_stage_latency_seconds{stage=...}).
# capture = frame age when it enters preprocess; batch_wait = time in the batcher;
# dispatch = rules + alert publish; total = capture -> alert dispatched.
PIPELINE_STAGES = ("capture", "preprocess", "batch_wait", "inference", "postprocess", "dispatch", "total")


class Metrics:
    """The app's metrics on their own registry (so tests can make several)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.stage_latency = Histogram(
            "edgecv_stage_latency_seconds", "Per-stage pipeline latency", ["stage"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.frames = Counter("edgecv_frames_total", "Frames read per camera", ["camera"], registry=r)
        self.frames_processed = Counter(
            "edgecv_frames_processed_total", "Frames that went through inference", ["camera"], registry=r
        )
        self.frames_dropped = Counter(
            "edgecv_frames_dropped_total", "Frames dropped, by reason", ["camera", "reason"], registry=r
        )
        self.camera_reconnects = Counter(
            "edgecv_camera_reconnects_total", "Camera reconnect attempts", ["camera"], registry=r
        )
        self.camera_up = Gauge("edgecv_camera_up", "1 when the camera delivers frames", ["camera"], registry=r)
        self.camera_fps = Gauge("edgecv_camera_fps", "Frames per second processed, per camera", ["camera"], registry=r)
        self.camera_target_fps = Gauge(
            "edgecv_camera_target_fps", "Configured fps cap of the camera", ["camera"], registry=r
        )
        self.batch_size = Histogram("edgecv_batch_size", "Frames per inference batch", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("edgecv_queue_depth", "Items waiting, per queue", ["queue"], registry=r)
        self.inflight = Gauge("edgecv_inference_inflight", "Inference requests in flight", registry=r)
        self.predictions = Counter(
            "edgecv_predictions_total", "Detections after NMS, per class", ["class_name"], registry=r
        )
        self.confidence = Histogram(
            "edgecv_detection_confidence", "Detection scores", buckets=CONFIDENCE_BUCKETS, registry=r
        )
        self.triton_errors = Counter(
            "edgecv_triton_errors_total", "Failed inference requests", ["kind"], registry=r
        )
        self.triton_up = Gauge("edgecv_triton_up", "1 when Triton and the model are ready", registry=r)
        self.events = Counter("edgecv_events_total", "Rule events, per rule", ["rule"], registry=r)
        self.alerts_published = Counter(
            "edgecv_alerts_published_total", "Alerts acknowledged by the broker (QoS 1)", registry=r
        )
        self.alerts_dropped = Counter(
            "edgecv_alerts_dropped_total", "Alerts dropped because the spool was full", registry=r
        )
        self.alerts_spooled = Gauge("edgecv_alert_spool_depth", "Alerts waiting on disk for the broker", registry=r)
        self.alerts_in_memory = Gauge(
            "edgecv_alert_memory_depth", "Alerts held in memory because the spool cannot write", registry=r
        )
        self.disk_full = Gauge(
            "edgecv_disk_full", "1 while writes fail for lack of space, by what (spool, evidence)", ["what"], registry=r
        )
        self.thread_errors = Counter(
            "edgecv_thread_errors_total", "Background thread turns that failed and were retried", ["thread"], registry=r
        )
        self.camera_error = Gauge(
            "edgecv_camera_error", "1 for the reason a camera is down now (refused, unresolvable, timeout, "
            "open_failed, stalled, ended)", ["camera", "reason"], registry=r,
        )
        self.inference_queued = Gauge(
            "edgecv_inference_queued", "Inference requests waiting for a free worker", registry=r
        )
        self.mqtt_connected = Gauge("edgecv_mqtt_connected", "1 when connected to the MQTT broker", registry=r)
        self.model_info = Gauge("edgecv_model_info", "The model served", ["model", "version"], registry=r)
        # Evidence and drift (filled by app.evidence.packager / app.drift.monitors).
        self.evidence_written = Counter("edgecv_evidence_written_total", "Evidence packages written", registry=r)
        self.evidence_uploaded = Counter("edgecv_evidence_uploaded_total", "Evidence packages uploaded", registry=r)
        self.evidence_refused = Counter(
            "edgecv_evidence_refused_total", "Evidence not kept, by reason (budget, free_space, write_failed, shed)",
            ["reason"], registry=r,
        )
        self.evidence_pending = Gauge("edgecv_evidence_pending", "Evidence packages not yet uploaded", registry=r)
        self.evidence_disk_bytes = Gauge("edgecv_evidence_disk_bytes", "Local evidence bytes on disk", registry=r)
        self.drift = Gauge("edgecv_drift_score", "Drift statistics, by kind (psi, ks, entropy, ...)", ["kind"], registry=r)
        self.drift_alarm = Gauge("edgecv_drift_alarm", "1 while a drift statistic is over its threshold", ["kind"], registry=r)
        self.mean_confidence = Gauge("edgecv_mean_confidence", "Mean detection confidence over the drift window", registry=r)
        self.review_flagged = Counter(
            "edgecv_review_flagged_total", "Samples sent to the review queue, by reason", ["reason"], registry=r
        )
        self.review_dropped = Counter(
            "edgecv_review_flag_dropped_total", "Flagged samples not sent (queue full, rejected, outage), by reason",
            ["reason"], registry=r,
        )
        self.drift_events = Counter("edgecv_drift_events_total", "Drift alarms raised, by kind", ["kind"], registry=r)
        self.restarts = Counter("edgecv_app_starts_total", "App process starts", registry=r)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_latency.labels(stage).observe(seconds)


# Device health metrics (app.health.exporter) use the edgecv_device_ prefix, e.g.
# edgecv_device_cpu_percent, edgecv_device_gpu_percent, edgecv_device_memory_used_bytes,
# edgecv_device_temperature_celsius{zone}, edgecv_device_throttled, edgecv_device_power_watts,
# edgecv_device_disk_used_ratio{mount}, edgecv_device_net_rtt_seconds, edgecv_device_net_loss_ratio.
