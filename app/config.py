"""The device app's configuration: one YAML file, validated with pydantic; errors point at file:line: field.

    site_id: site-a
    device_id: jetson-01
    manifest: ../models/nanodet-m/manifest.yaml   # relative to this file
    triton: {url: 127.0.0.1:8001, protocol: grpc, shared_memory: auto}
    batching: {max_batch: 4, max_delay_ms: 20}     # both default to the manifest's Triton settings
    cameras:
      - id: gate
        url: rtsp://10.0.0.21:554/stream1           # or a video file path (relative to this file), looped
        fps: 10                                     # cap; frames above it are skipped at the reader
        capture: {backend: gstreamer, decoder: nvv4l2decoder}   # default: opencv (app.pipeline.capture_gst)
        zones: [...]; lines: [...]; rules: [...]    # app.pipeline.rules.RulesConfig, per camera (frame pixels)
    tracker: {...}                                  # app.pipeline.tracker.TrackerConfig
    mqtt: {host: 127.0.0.1, port: 1883}            # omit to keep events local (counted, not sent)
    #   TLS: port 8883 (or tls: true): tls_ca (default: system CA store), tls_cert + tls_key, tls_verify_hostname
    metrics: {host: 127.0.0.1, port: 9108}          # default host 0.0.0.0; the role binds metrics_listen_interface
    spool_dir: /var/lib/edgecv/spool
    evidence: {dir: ..., pre_roll_s: 5, post_roll_s: 5, store: {bucket: ..., endpoint_url: ..., region: ...}}
    drift: {...}          # app.drift.monitors.DriftConfig; on whenever the manifest has reference_confidence
    sampling: {...}       # app.drift.sampling.SamplingConfig; needs review:
    review: {url: https://review.example, token_env: EDGECV_REVIEW_TOKEN, timeout_s: 5}

evidence, sampling and review are off when absent. Evidence keys in the store are always
`<site_id>/<device_id>/<event_id>/...` (the device's cloud role only allows that prefix).
Unknown keys are errors everywhere, so a typo never passes silently.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.drift.monitors import DriftConfig
from app.drift.sampling import SamplingConfig
from app.evidence.packager import EvidenceConfig
from app.pipeline.rules import NAME, DwellRule, Line, LineCrossingRule, Rule, RulesConfig, Zone, ZoneIntrusionRule
from app.pipeline.tracker import TrackerConfig
from fleet.spec.manifest import ConfidenceHistogram, ModelManifest, check_manifest
from fleet.spec.problems import Problem, ValidationFailed, problems_from_validation
from fleet.spec.yamlsrc import YamlDoc, YamlSourceError, load_yaml

STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}


def check_stream_url(url: str) -> tuple[str, int]:
    """(host, port) of an rtsp/http stream URL; ValueError naming what is wrong (no host, bad port)."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"'{url}' has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"'{url}' has an invalid port (1-65535)") from None
    if port == 0:
        raise ValueError(f"'{url}' has an invalid port (1-65535)")
    return parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def resolves(host: str) -> bool:
    """False only when the resolver says the name does not exist (a temporary failure is not a verdict)."""
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        return exc.errno not in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME))
    return True


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TritonConfig(_Strict):
    url: str = Field("127.0.0.1:8001", description="host:port of Triton's gRPC (or HTTP) endpoint")
    protocol: Literal["grpc", "http"] = "grpc"
    shared_memory: Literal["auto", "on", "off"] = Field(
        "auto", description="system shared memory for tensors; auto = on when Triton is on this host"
    )
    model_name: str | None = Field(None, description="the model's name in Triton (default: the manifest's name)")
    max_inflight: Annotated[int, Field(ge=1, le=16)] = 2
    request_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    control_timeout_s: Annotated[float, Field(gt=0)] = Field(
        2.0, description="deadline of the control calls (model ready, shared memory register/unregister)"
    )
    ready_timeout_s: Annotated[float, Field(ge=0)] = 120.0

    @field_validator("url")
    @classmethod
    def _host_port(cls, url: str) -> str:
        if "://" in url:
            raise ValueError("give host:port without a scheme (the protocol field picks grpc or http)")
        host, _, port = url.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"'{url}' is not host:port")
        return url

    @property
    def is_local(self) -> bool:
        return self.url.rpartition(":")[0] in ("127.0.0.1", "localhost", "::1", "[::1]")

    @property
    def use_shared_memory(self) -> bool:
        return self.shared_memory == "on" or (self.shared_memory == "auto" and self.is_local)


class BatchingConfig(_Strict):
    max_batch: Annotated[int, Field(ge=1, le=256)] | None = Field(None, description="default: manifest max_batch_size")
    max_delay_ms: Annotated[float, Field(ge=0)] | None = Field(
        None, description="default: manifest dynamic_batching.max_queue_delay_us"
    )


class CaptureConfig(_Strict):
    """How a camera is decoded: OpenCV's FFmpeg (default) or GStreamer with a chosen decoder element
    (app.pipeline.capture_gst): nvv4l2decoder (NVDEC) on a Jetson, decodebin / avdec_h264 elsewhere."""

    backend: Literal["opencv", "gstreamer"] = "opencv"
    decoder: str = Field("decodebin", pattern=r"^[a-z][a-z0-9_]*$", description="GStreamer decoder element")
    codec: Literal["h264", "h265"] = "h264"


class CameraConfig(_Strict):
    id: str = Field(pattern=NAME)
    url: str = Field(description="rtsp://... (or http[s]://) stream, or a video file path (looped)")
    fps: Annotated[float, Field(gt=0, le=120)] | None = Field(None, description="cap; default: the source's rate")
    open_timeout_ms: Annotated[int, Field(ge=100)] = 5000
    read_timeout_ms: Annotated[int, Field(ge=100)] = 3000
    capture: CaptureConfig = CaptureConfig()
    zones: list[Zone] = Field(default_factory=list)
    lines: list[Line] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)

    @property
    def is_stream(self) -> bool:
        return self.url.startswith(STREAM_SCHEMES)

    @field_validator("url")
    @classmethod
    def _stream_url(cls, url: str) -> str:
        if url.startswith(STREAM_SCHEMES):
            check_stream_url(url)
        return url

    @model_validator(mode="after")
    def _rule_references(self) -> CameraConfig:
        RulesConfig(zones=self.zones, lines=self.lines, rules=self.rules)  # duplicate names, unknown zone/line
        return self

    @property
    def rules_config(self) -> RulesConfig:
        return RulesConfig(zones=self.zones, lines=self.lines, rules=self.rules)


MQTT_TLS_PORT = 8883


class MqttConfig(_Strict):
    """The site broker. TLS is on when `tls: true`, when a TLS file is given, or on port 8883 (MQTT over TLS);
    without `tls_ca` the broker's certificate is checked against the system CA store. File paths are
    relative to the config file."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    username: str | None = None
    password: str | None = None
    tls: bool | None = Field(None, description="default: on for port 8883 or when a tls_* file is set")
    tls_ca: str | None = Field(None, description="PEM CA bundle the broker's certificate must chain to")
    tls_cert: str | None = Field(None, description="PEM client certificate (for a broker that requires one)")
    tls_key: str | None = Field(None, description="PEM key of tls_cert")
    tls_verify_hostname: bool = Field(True, description="check the certificate's name against host")
    window: Annotated[int, Field(ge=1)] = 32

    @model_validator(mode="after")
    def _tls_consistent(self) -> MqttConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together (the client certificate and its key)")
        files = [k for k in ("tls_ca", "tls_cert", "tls_key") if getattr(self, k)]
        if self.tls is False and files:
            raise ValueError(f"tls is false but {', '.join(files)} is set")
        if self.tls is False and self.port == MQTT_TLS_PORT:
            raise ValueError(f"port {MQTT_TLS_PORT} is MQTT over TLS: set tls: true (or use the broker's plain port)")
        return self

    @property
    def use_tls(self) -> bool:
        if self.tls is not None:
            return self.tls
        return self.port == MQTT_TLS_PORT or any((self.tls_ca, self.tls_cert, self.tls_key))


class MetricsConfig(_Strict):
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, lt=65536)] = Field(9108, description="0 picks a free port")


class HealthConfig(_Strict):
    """Device health exported beside the pipeline metrics (app.health.exporter)."""

    enabled: bool = True
    source: Literal["auto", "tegrastats", "psutil"] = "auto"
    mounts: list[str] = ["/"]
    upstream: str | None = Field(None, description="host:port probed for loss and round-trip time")
    probe_interval_s: float = Field(10.0, gt=0)


class EvidenceStoreConfig(_Strict):
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$")
    endpoint_url: str | None = Field(None, description="an S3-compatible endpoint (default: AWS)")
    region: str = "us-east-1"
    profile: str | None = Field(
        None, description="AWS profile (e.g. edgecv-device: IAM Roles Anywhere via credential_process); "
        "default: the SDK's credential chain")
    upload_interval_s: Annotated[float, Field(gt=0)] = 5.0
    shutdown_upload_s: Annotated[float, Field(ge=0)] = Field(
        5.0, description="at exit, how long a last upload pass may take (what is left goes up at the next start)"
    )


class EvidenceSection(EvidenceConfig):
    """app.evidence.packager.EvidenceConfig plus where packages are uploaded (absent: kept locally only)
    and the free space retention keeps on the evidence file system (both floors apply)."""

    store: EvidenceStoreConfig | None = None
    min_free_bytes: Annotated[int, Field(ge=0)] = Field(512 << 20, description="keep this much free on the disk")
    min_free_percent: Annotated[float, Field(ge=0, lt=100)] = Field(5.0, description="and this share of it")

    @property
    def packager_config(self) -> EvidenceConfig:
        return EvidenceConfig(**self.model_dump(exclude={"store", "min_free_bytes", "min_free_percent"}))


class DriftSection(DriftConfig):
    """app.drift.monitors.DriftConfig plus how often the alarms are evaluated."""

    enabled: bool = True
    check_interval_s: Annotated[float, Field(gt=0)] = 1.0
    reference_confidence: ConfidenceHistogram | None = Field(
        None, description="used when the manifest has none (the manifest's, written by `edgecv gates`, wins)"
    )

    @property
    def monitor_config(self) -> DriftConfig:
        return DriftConfig(**self.model_dump(exclude={"enabled", "check_interval_s", "reference_confidence"}))


class ReviewConfig(_Strict):
    url: str = Field(pattern=r"^https?://", description="the review service's base URL")
    token_env: str = Field("EDGECV_REVIEW_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                           description="name of the environment variable holding this device's token")
    timeout_s: Annotated[float, Field(gt=0)] = 5.0
    queue_size: Annotated[int, Field(ge=1, le=10_000)] = 64
    correction_poll_s: Annotated[float, Field(ge=0)] = Field(300.0, description="0 = never pull the correction rate")


class AppConfig(_Strict):
    site_id: str = Field(pattern=NAME)
    device_id: str = Field(pattern=NAME)
    manifest: Path
    artifact_root: Path | None = Field(
        None, description="where the manifest's file:// artifact uris resolve (default: the registry root above models/)"
    )
    triton: TritonConfig = TritonConfig()
    batching: BatchingConfig = BatchingConfig()
    cameras: list[CameraConfig] = Field(min_length=1)
    tracker: TrackerConfig = TrackerConfig()
    mqtt: MqttConfig | None = None
    metrics: MetricsConfig = MetricsConfig()
    health: HealthConfig = HealthConfig()
    spool_dir: Path = Path("/var/lib/edgecv/spool")
    evidence: EvidenceSection | None = None
    drift: DriftSection | None = None
    sampling: SamplingConfig | None = None
    review: ReviewConfig | None = None
    drain_timeout_s: Annotated[float, Field(gt=0, le=300)] = Field(
        10.0, description="at SIGTERM, the most the drain (batches in flight, evidence, alerts, Triton) may take"
    )

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cams: list[CameraConfig]) -> list[CameraConfig]:
        ids = [c.id for c in cams]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate camera ids: {', '.join(dupes)}")
        return cams


@dataclass
class Resolved:
    """A validated config with everything it refers to loaded: what the pipeline runs from."""

    config: AppConfig
    manifest: ModelManifest
    max_batch: int
    max_delay_s: float
    source: Path | None = None

    @property
    def model_name(self) -> str:
        return self.config.triton.model_name or self.manifest.name

    @property
    def drift_reference(self) -> ConfidenceHistogram | None:
        """The reference histogram drift is measured against; None = drift monitoring off."""
        drift = self.config.drift
        if drift is not None and not drift.enabled:
            return None
        return self.manifest.reference_confidence or (drift.reference_confidence if drift else None)

    @property
    def evidence_prefix(self) -> str:
        return f"{self.config.site_id}/{self.config.device_id}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _rel(base: Path, p: Path | str) -> Path:
    p = Path(p)
    return p if p.is_absolute() else (base / p)


def check_references(doc: YamlDoc, cfg: AppConfig) -> tuple[Resolved | None, list[Problem]]:
    """What the schema alone cannot check: the manifest loads, files exist, rules name the model's classes."""
    base = doc.path.parent
    problems: list[Problem] = []

    def problem(loc: tuple, field: str, msg: str) -> None:
        problems.append(Problem(doc.path, doc.line_of(loc), field, msg))

    manifest_path = _rel(base, cfg.manifest)
    manifest = None
    if not manifest_path.is_file():
        problem(("manifest",), "manifest", f"file not found: {manifest_path}")
    else:
        root = _rel(base, cfg.artifact_root) if cfg.artifact_root else None
        manifest, mproblems = check_manifest(manifest_path, root)
        for mp in mproblems:
            problem(("manifest",), "manifest", f"invalid manifest: {mp}")
        manifest = None if mproblems else manifest

    for i, cam in enumerate(cfg.cameras):
        if cam.is_stream:
            host = check_stream_url(cam.url)[0]
            if not _is_ip(host) and not resolves(host):
                problem(("cameras", i, "url"), f"cameras[{i}].url", f"host '{host}' does not resolve (DNS or /etc/hosts)")
        if not cam.is_stream and "://" in cam.url and not cam.url.startswith("file://"):
            problem(("cameras", i, "url"), f"cameras[{i}].url", f"unsupported scheme in '{cam.url}' (rtsp, http, file)")
        elif not cam.is_stream and not _rel(base, cam.url.removeprefix("file://")).is_file():
            problem(("cameras", i, "url"), f"cameras[{i}].url", f"video file not found: {_rel(base, cam.url)}")
        if manifest is not None:
            for j, rule in enumerate(cam.rules):
                unknown = [c for c in rule.classes if c not in manifest.classes]
                if unknown:
                    problem(
                        ("cameras", i, "rules", j, "classes"),
                        f"cameras[{i}].rules[{j}].classes",
                        f"unknown classes {unknown} (the model has: {manifest.classes})",
                    )
    if cfg.mqtt is not None and cfg.mqtt.use_tls:
        for key in ("tls_ca", "tls_cert", "tls_key"):
            value = getattr(cfg.mqtt, key)
            if value and not _rel(base, value).is_file():
                problem(("mqtt", key), f"mqtt.{key}", f"file not found: {_rel(base, value)}")
    if cfg.sampling is not None and cfg.review is None:
        problem(("sampling",), "sampling", "flagged frames go to the review service: add a review: section")
    if cfg.review is not None and not os.environ.get(cfg.review.token_env):
        problem(("review", "token_env"), "review.token_env",
                f"environment variable {cfg.review.token_env} (the device's review token) is not set")
    if manifest is None:
        return None, problems

    max_batch = cfg.batching.max_batch or manifest.triton.max_batch_size
    if max_batch > manifest.triton.max_batch_size:
        problem(
            ("batching", "max_batch"),
            "batching.max_batch",
            f"{max_batch} exceeds the model's max_batch_size {manifest.triton.max_batch_size}",
        )
    delay_ms = cfg.batching.max_delay_ms
    if delay_ms is None:
        delay_ms = manifest.triton.dynamic_batching.max_queue_delay_us / 1000.0
    if problems:
        return None, problems
    return Resolved(config=cfg, manifest=manifest, max_batch=max_batch, max_delay_s=delay_ms / 1000.0, source=doc.path), []


_RULE_KINDS = re.compile(r"(rules\[\d+\])\.(?:zone_intrusion|line_crossing|dwell)\b")


def _without_rule_kind(doc: YamlDoc, p: Problem) -> Problem:
    # pydantic puts the rule's discriminator (its kind) into the error path; the YAML has no such key.
    field = _RULE_KINDS.sub(r"\1", p.field)
    if field == p.field:
        return p
    loc = tuple(int(x) if x.isdigit() else x for x in re.findall(r"[^.\[\]]+", field))
    return Problem(p.path, doc.line_of(loc), field, p.message)


def camera_source(resolved: Resolved, cam: CameraConfig) -> str:
    """The URL or absolute file path to open for a camera (file paths are relative to the config file)."""
    if cam.is_stream or resolved.source is None:
        return cam.url
    return str(_rel(resolved.source.parent, cam.url.removeprefix("file://")))


def config_path(resolved: Resolved, path: str) -> str:
    """A path from the config (a TLS file, say) resolved against the config file's directory."""
    return str(path if resolved.source is None else _rel(resolved.source.parent, path))


def check_config(path: str | Path) -> tuple[Resolved | None, list[Problem]]:
    path = Path(path)
    try:
        doc = load_yaml(path)
    except YamlSourceError as exc:
        return None, [Problem(path, exc.line, "", exc.message)]
    try:
        cfg = AppConfig.model_validate(doc.data)
    except ValidationError as exc:
        return None, [_without_rule_kind(doc, p) for p in problems_from_validation(doc, exc)]
    return check_references(doc, cfg)


def load_config(path: str | Path) -> Resolved:
    """Load, validate and resolve an app config; raises ValidationFailed listing every problem."""
    resolved, problems = check_config(path)
    if problems:
        raise ValidationFailed(problems)
    assert resolved is not None
    return resolved


__all__ = [
    "AppConfig",
    "BatchingConfig",
    "CameraConfig",
    "DwellRule",
    "LineCrossingRule",
    "MetricsConfig",
    "MqttConfig",
    "Resolved",
    "TritonConfig",
    "ZoneIntrusionRule",
    "camera_source",
    "check_config",
    "load_config",
]
