"""`edgecv validate`: check model manifests and fleet files, one problem per line as file:line: field: message."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from fleet.manifest import REPO_ROOT, ModelManifest
from fleet.yamlsrc import YamlDoc, YamlSourceError, load_yaml


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ValidationFailed(ValueError):
    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def _field_name(loc: tuple) -> str:
    # Drop pydantic's discriminator tags (e.g. 'nanodet') so the path reads like the YAML.
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in loc]
    return ".".join(parts).replace(".[", "[")


def problems_from_validation(doc: YamlDoc, exc: ValidationError) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p not in ("nanodet", "boxes_scores_classes"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here; is it a typo?)"
        out.append(Problem(doc.path, doc.line_of(loc), _field_name(loc), msg))
    return out


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_manifest_artifact(doc: YamlDoc, manifest: ModelManifest, root: Path | None = None) -> list[Problem]:
    """A local artifact must exist with the declared size and sha256."""
    root = root or REPO_ROOT
    art = manifest.artifact
    if not art.is_local:
        return []
    line = doc.line_of(("artifact", "uri"))
    path = art.local_path(root)
    if not path.is_file():
        return [Problem(doc.path, line, "artifact.uri", f"artifact file not found: {path}")]
    problems = []
    size = path.stat().st_size
    if size != art.size:
        problems.append(
            Problem(doc.path, doc.line_of(("artifact", "size")), "artifact.size", f"is {art.size}, file has {size}")
        )
    digest = sha256_file(path)
    if digest != art.sha256:
        problems.append(
            Problem(
                doc.path,
                doc.line_of(("artifact", "sha256")),
                "artifact.sha256",
                f"does not match the file ({digest})",
            )
        )
    return problems


# A document kind: its schema and the checks that need more than the schema.
@dataclass(frozen=True)
class Kind:
    model: type[BaseModel]
    extra_checks: Callable[[YamlDoc, Any], list[Problem]]


def _manifest_kind() -> Kind:
    return Kind(ModelManifest, check_manifest_artifact)


def _fleet_kind() -> Kind:
    from fleet.fleetspec import FleetSpec, check_fleet_references

    return Kind(FleetSpec, check_fleet_references)


def kind_for(path: Path) -> Kind | None:
    parts = path.resolve().parts
    if path.name == "manifest.yaml" and "models" in parts:
        return _manifest_kind()
    if "fleets" in parts and path.suffix in (".yaml", ".yml"):
        return _fleet_kind()
    return None


def check_file(path: Path) -> tuple[BaseModel | None, list[Problem]]:
    kind = kind_for(path)
    if kind is None:
        return None, [Problem(path, 1, "", "not a model manifest (models/*/manifest.yaml) or fleet file (fleets/*.yaml)")]
    try:
        doc = load_yaml(path)
    except YamlSourceError as exc:
        return None, [Problem(path, exc.line, "", exc.message)]
    try:
        obj = kind.model.model_validate(doc.data)
    except ValidationError as exc:
        return None, problems_from_validation(doc, exc)
    return obj, kind.extra_checks(doc, obj)


def discover(paths: list[Path], root: Path | None = None) -> list[Path]:
    """Expand directories; with no paths, every manifest under models/ and fleet file under fleets/."""
    root = root or REPO_ROOT
    if not paths:
        paths = [d for d in (root / "models", root / "fleets") if d.is_dir()]
    found: list[Path] = []
    for p in paths:
        if not p.is_dir():
            found.append(p)
        elif "fleets" in p.resolve().parts:
            found += sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
        else:
            found += sorted(p.rglob("manifest.yaml"))
    return found


def validate_paths(paths: list[Path], root: Path | None = None) -> tuple[list[Path], list[Problem]]:
    files = discover(paths, root)
    problems: list[Problem] = []
    for f in files:
        problems += check_file(f)[1]
    return files, problems
