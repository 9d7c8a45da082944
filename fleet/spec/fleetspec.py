"""A fleet file: `fleets/<fleet>.yaml`, the GitOps desired state of one Balena fleet.

It names the fleet, the release it should run (the app version and the model manifests the release
carries, matched against the release tags the release build sets), the rollout policy (canary, pilot,
waves, each with a soak) and the analysis run at the end of each soak. Unknown keys are errors.
Model manifest paths are relative to the repository root: the parent of the fleets/ folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, model_validator

from fleet.spec.base import Strict, registry_root_of
from fleet.spec.durations import format_duration, parse_duration
from fleet.spec.manifest import STAGES, ModelManifest, check_manifest, load_manifest
from fleet.spec.problems import Problem, check_document, load_document
from fleet.spec.yamlsrc import YamlDoc

KIND = "fleet"

APP_TAG = "edgecv.app"  # release tag: the app version the release build packed
MODEL_TAG = "edgecv.model"  # release tag: comma-separated model refs name@version, sorted


def release_tags(app: str, model_refs: Iterable[str]) -> dict[str, str]:
    """The release tags a release build sets (`edgecv release tags`) and the controller looks for:
    the one definition of how a release says what it carries."""
    return {APP_TAG: app, MODEL_TAG: ",".join(sorted(model_refs))}


def model_refs_of(tag_value: str | None) -> tuple[str, ...]:
    """The sorted model refs in an edgecv.model tag value (spaces and order do not matter)."""
    return tuple(sorted(v.strip() for v in (tag_value or "").split(",") if v.strip()))


def tags_match(tags: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """Whether a release's tags carry what `release_tags` asks for (the controller's match)."""
    return tags.get(APP_TAG) == wanted[APP_TAG] and model_refs_of(tags.get(MODEL_TAG)) == model_refs_of(wanted[MODEL_TAG])


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
Percent = Annotated[float, Field(gt=0, le=100)]


class TagSelector(Strict):
    key: str = Field(min_length=1)
    value: str | None = Field(default=None, description="any value when omitted")


class Canary(Strict):
    devices: list[str] = Field(default_factory=list, description="device uuids, tried in this order")
    tag: TagSelector | None = Field(default=None, description="or: devices carrying this device tag")
    max_devices: Annotated[int, Field(ge=1, le=5)] = 2
    soak: Duration = timedelta(hours=24)

    @model_validator(mode="after")
    def _one_way(self) -> Canary:
        if bool(self.devices) == (self.tag is not None):
            raise ValueError("name the canary devices (devices: [uuid, ...]) or select them by tag, not both")
        if len(self.devices) > self.max_devices:
            raise ValueError(f"{len(self.devices)} canary devices named but max_devices is {self.max_devices}")
        bad = [u for u in self.devices if not re.fullmatch(r"[0-9a-f]{32}|[0-9a-f]{62}", u)]
        if bad:
            raise ValueError(f"not balena device uuids (32 or 62 lowercase hex): {bad}")
        return self


class Pilot(Strict):
    percent: Percent = 10
    soak: Duration = timedelta(hours=48)


class Wave(Strict):
    percent: Percent
    soak: Duration = timedelta(hours=24)


def _default_waves() -> list[Wave]:
    return [Wave(percent=25), Wave(percent=50), Wave(percent=100)]


class RolloutPolicy(Strict):
    canary: Canary
    pilot: Pilot = Pilot()
    waves: list[Wave] = Field(default_factory=_default_waves, min_length=1)
    max_offline: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.1, description="share of a stage's devices that may be offline (or still updating) at its end"
    )
    on_failure: Literal["rollback", "pause"] = "rollback"

    @model_validator(mode="after")
    def _increasing(self) -> RolloutPolicy:
        percents = [self.pilot.percent] + [w.percent for w in self.waves]
        if any(b <= a for a, b in zip(percents, percents[1:], strict=False)):
            raise ValueError(f"pilot and wave percentages must increase strictly, got {percents}")
        if self.waves[-1].percent != 100:
            raise ValueError("the last wave must reach 100 percent of the fleet")
        return self


class Check(Strict):
    """One PromQL check. In queries, $devices is a regex of device uuids (the `device` label) and
    $window the analysis window. Thresholds: absolute (max/min) and/or relative to the baseline
    (the devices still on the previous release)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    query: str
    samples: str | None = Field(default=None, description="PromQL counting this check's samples")
    min_samples: Annotated[int, Field(ge=0)] | None = Field(default=None, description="default: analysis.min_samples")
    max: float | str | None = Field(default=None, description="a number, or budget.<stage> from the manifest (ms)")
    min: float | None = None
    max_vs_baseline: Annotated[float, Field(gt=0)] | None = Field(default=None, description="value <= baseline * x")
    min_vs_baseline: Annotated[float, Field(gt=0)] | None = Field(default=None, description="value >= baseline * x")
    no_data: Literal["inconclusive", "zero"] = "inconclusive"

    @model_validator(mode="after")
    def _check(self) -> Check:
        if "$devices" not in self.query:
            raise ValueError("query must select the devices with $devices (e.g. {device=~\"$devices\"})")
        if isinstance(self.max, str):
            stage = self.max.removeprefix("budget.")
            if not self.max.startswith("budget.") or stage not in STAGES:
                raise ValueError(f"max must be a number or budget.<stage> with a stage in {list(STAGES)}")
        if all(v is None for v in (self.max, self.min, self.max_vs_baseline, self.min_vs_baseline)):
            raise ValueError("a check needs at least one threshold (max, min, max_vs_baseline, min_vs_baseline)")
        return self


def _sel(metric: str, extra: str = "") -> str:
    return f'{metric}{{{extra}device=~"$devices"}}'


INFERENCE_COUNT = _sel("edgecv_stage_latency_seconds_count", 'stage="inference",')
DRIFT_PSI = _sel("edgecv_drift_score", 'kind="psi",')

# The default analysis: metric names from app/metrics.py.
DEFAULT_CHECKS = (
    Check(
        name="inference_p95_ms",
        query="1000 * histogram_quantile(0.95, sum by (le) (rate("
        + _sel("edgecv_stage_latency_seconds_bucket", 'stage="inference",') + "[$window])))",
        samples=f"sum(increase({INFERENCE_COUNT}[$window]))",
        max="budget.inference",
        max_vs_baseline=1.25,
    ),
    Check(
        name="fps",
        query=f"avg(avg_over_time({_sel('edgecv_camera_fps')}[$window]))",
        samples=f"sum(count_over_time({_sel('edgecv_camera_fps')}[$window]))",
        min_samples=10,  # scrapes, not frames
        min_vs_baseline=0.9,
    ),
    Check(
        name="triton_error_ratio",
        query=f"sum(increase({_sel('edgecv_triton_errors_total')}[$window])) "
        f"/ clamp_min(sum(increase({INFERENCE_COUNT}[$window])), 1)",
        max=0.01,
        no_data="zero",
    ),
    Check(
        name="restarts",
        query=f"max(increase({_sel('edgecv_app_starts_total')}[$window]))",
        max=2,
        no_data="zero",
    ),
    Check(
        name="mean_confidence",
        query=f"avg(avg_over_time({_sel('edgecv_mean_confidence')}[$window]))",
        # the gauge reads 0 before any detection: it means something only once inferences ran
        samples=f"sum(increase({INFERENCE_COUNT}[$window]))",
        min_vs_baseline=0.9,
    ),
    Check(
        name="drift_psi",
        query=f"max(max_over_time({DRIFT_PSI}[$window]))",
        max=0.25,
        no_data="zero",
    ),
    Check(
        name="availability",
        query=f"avg(avg_over_time({_sel('up')}[$window]))",
        min=0.9,
    ),
)


class Analysis(Strict):
    prometheus: str | None = Field(default=None, description="base URL; else --prometheus / $EDGECV_PROMETHEUS_URL")
    window: Duration = timedelta(hours=1)
    min_samples: Annotated[int, Field(ge=1)] = 100
    checks: list[Check] = Field(default_factory=lambda: list(DEFAULT_CHECKS), min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Analysis:
        names = [c.name for c in self.checks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate check names: {dupes}")
        return self


class ReleaseSpec(Strict):
    app: str = Field(min_length=1, description=f"the app version: release tag {APP_TAG}")
    models: list[str] = Field(min_length=1, description=f"manifest paths; their name@version form tag {MODEL_TAG}")
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{7,64}$",
                               description="only to choose between several successful builds with the same tags")


class FleetSpec(Strict):
    kind: Literal["fleet"] = KIND
    fleet: str = Field(pattern=r"^[a-z0-9_.-]+/[a-z0-9_.-]+$", description="Balena fleet slug: org/name, lowercase")
    release: ReleaseSpec
    rollout: RolloutPolicy
    analysis: Analysis = Analysis()

    def release_tags(self, manifests: Iterable[ModelManifest]) -> dict[str, str]:
        return release_tags(self.release.app, (m.ref for m in manifests))


def check_fleet_references(doc: YamlDoc, spec: FleetSpec, root: Path | None = None) -> list[Problem]:
    """Each referenced manifest exists and is valid; paths are relative to the registry root."""
    problems = []
    root = root or registry_root_of(doc.path)
    for i, rel in enumerate(spec.release.models):
        loc = ("release", "models", i)
        path = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            problems.append(Problem(doc.path, doc.line_of(loc), f"release.models[{i}]",
                                    "paths are relative to the repository root, without '..'"))
            continue
        if not path.is_file():
            problems.append(Problem(doc.path, doc.line_of(loc), f"release.models[{i}]",
                                    f"manifest not found: {rel}"))
            continue
        manifest, inner = check_manifest(path, root)
        if inner or manifest is None:
            first = inner[0] if inner else "not a model manifest"
            problems.append(Problem(doc.path, doc.line_of(loc), f"release.models[{i}]",
                                    f"invalid manifest {rel}: {first}" + (f" (+{len(inner) - 1} more)"
                                                                          if len(inner) > 1 else "")))
    return problems


def check_fleet(path: str | Path, root: Path | None = None) -> tuple[FleetSpec | None, list[Problem]]:
    return check_document(Path(path), FleetSpec, lambda doc, spec: check_fleet_references(doc, spec, root))


def load_fleet(path: str | Path, root: Path | None = None) -> tuple[FleetSpec, dict[str, ModelManifest]]:
    """Validate a fleet file and the manifests it names; raises fleet.spec.problems.ValidationFailed."""
    path = Path(path)
    spec = load_document(path, FleetSpec, lambda doc, s: check_fleet_references(doc, s, root))
    root = root or registry_root_of(path)
    return spec, {rel: load_manifest(root / rel, root) for rel in spec.release.models}
