"""The model manifest: `models/<name>/manifest.yaml`, one per model version line.

Every field is validated; unknown keys are errors so that typos never pass silently.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import semver
from pydantic import Field, field_validator, model_validator

from fleet.spec.base import StrEnum, Strict, registry_root_of, sha256_file
from fleet.spec.problems import Problem, check_document, load_document
from fleet.spec.yamlsrc import YamlDoc

KIND = "model-manifest"

# The blueprint's latency budget table (ms per stage).
DEFAULT_BUDGET_MS = {
    "capture": 33.0,
    "preprocess": 10.0,
    "inference": 100.0,
    "postprocess": 20.0,
    "dispatch": 50.0,
    "total": 213.0,
}
STAGES = tuple(DEFAULT_BUDGET_MS)


PositiveMs = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class TensorDType(StrEnum):
    FP32 = "FP32"
    FP16 = "FP16"
    UINT8 = "UINT8"
    INT32 = "INT32"
    INT64 = "INT64"

    @property
    def numpy(self) -> str:
        return {"FP32": "float32", "FP16": "float16", "UINT8": "uint8", "INT32": "int32", "INT64": "int64"}[
            self.value
        ]


class InputSpec(Strict):
    """How a frame becomes the model's input tensor."""

    name: str = Field(description="input tensor name in the model")
    shape: list[Annotated[int, Field(gt=0)]] = Field(description="per-image shape without batch, CHW or HWC")
    dtype: TensorDType = TensorDType.FP32
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    channel_order: Literal["RGB", "BGR"] = "RGB"
    mean: list[float] = [0.0, 0.0, 0.0]
    std: list[Annotated[float, Field(gt=0)]] = [1.0, 1.0, 1.0]
    resize: Literal["letterbox", "stretch"] = "letterbox"
    pad_value: Annotated[int, Field(ge=0, le=255)] = 114

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if len(self.shape) != 3:
            raise ValueError("shape must have 3 dims (without batch)")
        channels = self.shape[0] if self.layout == "NCHW" else self.shape[2]
        if channels != 3:
            raise ValueError(f"shape has {channels} channels for layout {self.layout}; expected 3")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per channel (3)")
        return self

    @property
    def height(self) -> int:
        return self.shape[1] if self.layout == "NCHW" else self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[2] if self.layout == "NCHW" else self.shape[1]


class OutputSpec(Strict):
    name: str
    shape: list[int] = Field(description="per-image shape without batch; -1 for variable")
    dtype: TensorDType = TensorDType.FP32


class NanoDetParams(Strict):
    """NanoDet head: per stride a class-score output (sigmoid applied) and a box-distribution output."""

    strides: list[Annotated[int, Field(gt=0)]] = [8, 16, 32]
    score_outputs: list[str]
    box_outputs: list[str]
    reg_max: Annotated[int, Field(ge=1)] = 10
    nms_iou: Fraction = 0.6
    score_threshold: Fraction = 0.35
    max_detections: Annotated[int, Field(gt=0)] = 100

    @model_validator(mode="after")
    def _same_lengths(self) -> NanoDetParams:
        if not (len(self.strides) == len(self.score_outputs) == len(self.box_outputs)):
            raise ValueError("strides, score_outputs and box_outputs must have the same length")
        return self


class BoxesScoresClassesParams(Strict):
    """For models that decode (and usually NMS) themselves."""

    boxes_output: str
    scores_output: str
    classes_output: str
    box_format: Literal["xyxy", "xywh", "cxcywh"] = "xyxy"
    normalized: bool = False
    score_threshold: Fraction = 0.35
    nms_iou: Fraction | None = None
    max_detections: Annotated[int, Field(gt=0)] = 100


class NanoDetDecoder(Strict):
    name: Literal["nanodet"]
    params: NanoDetParams


class BoxesScoresClassesDecoder(Strict):
    name: Literal["boxes_scores_classes"]
    params: BoxesScoresClassesParams


Decoder = Annotated[NanoDetDecoder | BoxesScoresClassesDecoder, Field(discriminator="name")]


class Artifact(Strict):
    uri: str = Field(description="file://<path relative to the repo> or s3://bucket/key")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: Annotated[int, Field(gt=0)]
    format: Literal["onnx", "tensorrt_plan"]

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str) -> str:
        if uri.startswith("file://"):
            rel = uri.removeprefix("file://")
            if not rel or rel.startswith("/") or ".." in Path(rel).parts:
                raise ValueError("file:// uris are relative to the repository root, without '..'")
        elif uri.startswith("s3://"):
            if len(uri.removeprefix("s3://").split("/", 1)) != 2:
                raise ValueError("s3 uris need a bucket and a key: s3://bucket/key")
        else:
            raise ValueError("uri must start with file:// or s3://")
        return uri

    @property
    def is_local(self) -> bool:
        return self.uri.startswith("file://")

    def local_path(self, root: Path) -> Path:
        """The file a file:// uri names, under an explicit root (the registry root, or the device's model dir)."""
        return root / self.uri.removeprefix("file://")


class DynamicBatching(Strict):
    preferred_batch_sizes: list[Annotated[int, Field(gt=0)]] = []
    max_queue_delay_us: Annotated[int, Field(ge=0)] = 2000


class InstanceGroup(Strict):
    count: Annotated[int, Field(gt=0)] = 1
    kind: Literal["KIND_GPU", "KIND_CPU", "KIND_AUTO"] = "KIND_GPU"


class TensorRT(Strict):
    """The TensorRT execution accelerator of the onnxruntime backend, for KIND_GPU instances.

    The engine is built at the first load (minutes on a Jetson) and cached under engine_cache_dir, so later
    starts load it in seconds; the directory must persist across restarts and be writable by Triton.
    """

    enabled: bool = True
    precision: Literal["FP16", "FP32"] = "FP16"
    engine_cache_dir: str = Field("/var/cache/edgecv/trt-engines", pattern=r"^/")
    max_workspace_mb: Annotated[int, Field(ge=64)] = 1024


# Tensor names of the graph `edgecv triton render` generates around the artifact (see fleet/triton/fuse.py).
FUSED_INPUT = "image_u8"
DETECTIONS_OUTPUT = "detections"  # [max_det, 6] per image: x1, y1, x2, y2 (input pixels), score, class (-1: none)


class TritonSpec(Strict):
    max_batch_size: Annotated[int, Field(ge=1, le=256)] = 8
    dynamic_batching: DynamicBatching = DynamicBatching()
    instances: InstanceGroup = InstanceGroup()
    fused_preprocess: bool = Field(
        False, description="serve a uint8 letterboxed BGR NHWC input; cast, mean/std, channel order and layout "
        "run in a graph generated around the artifact at render time"
    )
    server_decode: bool = Field(
        False, description="decode + NMS in the generated graph; the app reads a fixed [max_det, 6] output"
    )
    tensorrt: TensorRT = TensorRT()

    @model_validator(mode="after")
    def _preferred_within_max(self) -> TritonSpec:
        too_big = [b for b in self.dynamic_batching.preferred_batch_sizes if b > self.max_batch_size]
        if too_big:
            raise ValueError(f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}")
        return self


class ClassGate(Strict):
    precision: Fraction = 0.95
    recall: Fraction = 0.90
    f1: Fraction = 0.92


class Waiver(Strict):
    """A deliberate, dated exception: this version may ship without a passing gate report bound to its sha256.
    The rollout plan shows it in bold; past `until` it is an error, never a silent pass."""

    who: str = Field(min_length=1, description="who accepts the risk (a person, not a team alias)")
    why: str = Field(min_length=10, description="why shipping ungated is acceptable, and what replaces the gate")
    until: date = Field(description="last day the waiver holds (YYYY-MM-DD)")


DEFAULT_MIN_SUPPORT = 1000  # ground-truth boxes per gated class below which a verdict is not trusted


class Gates(Strict):
    iou_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    score_threshold: Fraction = 0.35
    default: ClassGate = ClassGate()
    classes: dict[str, ClassGate] = Field(default_factory=dict, description="per-class overrides")
    evaluate: list[str] | None = Field(
        default=None, description="classes the gate applies to (default: every class in the ground truth)"
    )
    min_support: Annotated[int, Field(ge=1)] = Field(
        default=DEFAULT_MIN_SUPPORT, description="ground-truth boxes a gated class needs; fewer fails closed"
    )
    waiver: Waiver | None = Field(default=None, description="ship without a bound, passing gate report (dated)")

    def for_class(self, name: str) -> ClassGate:
        return self.classes.get(name, self.default)


class LatencyBudget(Strict):
    capture: PositiveMs = DEFAULT_BUDGET_MS["capture"]
    preprocess: PositiveMs = DEFAULT_BUDGET_MS["preprocess"]
    inference: PositiveMs = DEFAULT_BUDGET_MS["inference"]
    postprocess: PositiveMs = DEFAULT_BUDGET_MS["postprocess"]
    dispatch: PositiveMs = DEFAULT_BUDGET_MS["dispatch"]
    total: PositiveMs = DEFAULT_BUDGET_MS["total"]

    def as_dict(self) -> dict[str, float]:
        return self.model_dump()


class Provenance(Strict):
    source: str
    licence: str
    conversion: str = Field(description="how the artifact was produced (a script path or recipe)")


class DriftThresholdsDoc(Strict):
    """Drift thresholds stated for this reference; each one left out is derived from the reference
    (app.drift.monitors.derive_thresholds), for a window of n detections, m = sum(counts) reference
    detections and the per-check false-alarm rate a:
      ks: the two-sample Kolmogorov-Smirnov critical value sqrt(-ln(a/2)/2) * sqrt((n+m)/(n*m));
      psi: the chi-square quantile chi2(1-a, k-1) * (1/n + 1/m), k = non-empty reference bins
           (PSI ~ chi-square/n for small shifts);
      detection_entropy: z(1-a) * sd * sqrt(1/n + 1/m), sd = the spread of one detection's entropy under
           the reference, so the window-to-window spread of the mean is what the threshold is made of.
    They assume independent detections; a stream with strongly repeated detections may need stated values."""

    # Checks overlap: a sliding window crosses a level about (length / window) * z^2 times as often as one
    # window does, so 1e-5 per check is what keeps bench/drift.py at 1 false alarm in 100 runs of 25,000
    # unshifted detections (1e-4: 6 in 100).
    false_alarm_rate: float = Field(1e-5, gt=0, lt=0.5, description="chance that one check of one statistic "
                                    "alarms on an unshifted window")
    ks: float | None = Field(None, gt=0, le=1)
    psi: float | None = Field(None, gt=0)
    detection_entropy: float | None = Field(None, gt=0, description="rise of mean detection entropy, nats")


class ConfidenceHistogram(Strict):
    """Reference distribution of detection confidences on the held-out set (for drift)."""

    edges: list[Fraction] = Field(min_length=2)
    counts: list[Annotated[int, Field(ge=0)]]
    drift_thresholds: DriftThresholdsDoc = DriftThresholdsDoc()

    @model_validator(mode="after")
    def _consistent(self) -> ConfidenceHistogram:
        if len(self.counts) != len(self.edges) - 1:
            raise ValueError("counts must have one entry fewer than edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must increase strictly")
        if sum(self.counts) == 0:
            raise ValueError("counts must not all be zero")
        return self


class ModelManifest(Strict):
    kind: Literal["model-manifest"] = KIND
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str
    task: Literal["detection"] = "detection"
    classes: list[str] = Field(min_length=1)
    input: InputSpec
    outputs: list[OutputSpec] = Field(min_length=1)
    decoder: Decoder
    artifact: Artifact
    triton: TritonSpec = TritonSpec()
    gates: Gates = Gates()
    latency_budget_ms: LatencyBudget = LatencyBudget()
    provenance: Provenance
    reference_confidence: ConfidenceHistogram | None = None
    gate_report: str | None = Field(default=None, description="path of the gate report for this version")

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        if not semver.Version.is_valid(v):
            raise ValueError(f"'{v}' is not a semantic version (MAJOR.MINOR.PATCH)")
        return v

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, classes: list[str]) -> list[str]:
        dupes = sorted({c for c in classes if classes.count(c) > 1})
        if dupes:
            raise ValueError(f"duplicate classes: {dupes}")
        return classes

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelManifest:
        unknown = sorted(set(self.gates.classes) - set(self.classes))
        if unknown:
            raise ValueError(f"gates.classes names classes not in the class list: {unknown}")
        if self.gates.evaluate:
            missing = sorted(set(self.gates.evaluate) - set(self.classes))
            if missing:
                raise ValueError(f"gates.evaluate names classes not in the class list: {missing}")
        names = {o.name for o in self.outputs}
        needed: list[str] = []
        if isinstance(self.decoder, NanoDetDecoder):
            needed = self.decoder.params.score_outputs + self.decoder.params.box_outputs
        else:
            p = self.decoder.params
            needed = [p.boxes_output, p.scores_output, p.classes_output]
        missing_out = [n for n in needed if n not in names]
        if missing_out:
            raise ValueError(f"decoder uses outputs not declared in outputs: {missing_out}")
        if self.triton.server_decode and not isinstance(self.decoder, NanoDetDecoder):
            raise ValueError(f"triton.server_decode needs the nanodet decoder, not {self.decoder.name}")
        if (self.triton.fused_preprocess or self.triton.server_decode) and self.artifact.format != "onnx":
            raise ValueError("triton.fused_preprocess and triton.server_decode need an onnx artifact")
        return self

    @property
    def served_input(self) -> InputSpec:
        """The input tensor as Triton serves it: the artifact's, or with fused_preprocess the generated graph's
        uint8 letterboxed BGR NHWC image (the graph does the rest)."""
        if not self.triton.fused_preprocess:
            return self.input
        inp = self.input
        return InputSpec(name=FUSED_INPUT, shape=[inp.height, inp.width, 3], dtype=TensorDType.UINT8, layout="NHWC",
                         channel_order="BGR", resize=inp.resize, pad_value=inp.pad_value)

    @property
    def served_outputs(self) -> list[OutputSpec]:
        """The outputs as Triton serves them: the artifact's, or with server_decode one fixed-size detections."""
        if not self.triton.server_decode:
            return list(self.outputs)
        return [OutputSpec(name=DETECTIONS_OUTPUT, shape=[self.decoder.params.max_detections, 6])]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def _data(source: Any) -> dict:
    return source.data if hasattr(source, "data") else source


def parse_manifest(source: Any) -> ModelManifest:
    """Build a manifest from a mapping or a YamlDoc (raises pydantic.ValidationError)."""
    return ModelManifest.model_validate(_data(source))


def check_artifact(manifest: ModelManifest, doc: YamlDoc, root: Path) -> list[Problem]:
    """A local (file://) artifact must exist under `root` with the declared size and sha256."""
    art = manifest.artifact
    if not art.is_local:
        return []
    path = art.local_path(root)
    if not path.is_file():
        return [Problem(doc.path, doc.line_of(("artifact", "uri")), "artifact.uri", f"artifact file not found: {path}")]
    problems = []
    size = path.stat().st_size
    if size != art.size:
        problems.append(
            Problem(doc.path, doc.line_of(("artifact", "size")), "artifact.size", f"is {art.size}, file has {size}")
        )
    digest = sha256_file(path)
    if digest != art.sha256:
        problems.append(
            Problem(doc.path, doc.line_of(("artifact", "sha256")), "artifact.sha256", f"does not match the file ({digest})")
        )
    return problems


def _artifact_checks(root: Path | None):
    return lambda doc, manifest: check_artifact(manifest, doc, root or registry_root_of(doc.path))


def check_manifest(path: str | Path, root: Path | None = None) -> tuple[ModelManifest | None, list[Problem]]:
    """Validate one manifest file and its artifact; `root` is where file:// uris resolve
    (default: the registry root holding the manifest's models/ folder)."""
    return check_document(Path(path), ModelManifest, _artifact_checks(root))


def load_manifest(path: str | Path, root: Path | None = None) -> ModelManifest:
    """Load and validate one manifest file; raises fleet.spec.problems.ValidationFailed with every problem."""
    return load_document(Path(path), ModelManifest, _artifact_checks(root))
