"""`edgecv validate`: check model manifests and fleet files, one problem per line as file:line: field: message.

A document's schema is chosen by its `kind:` field (`model-manifest` or `fleet`) or by an explicit
argument, never by where the file lies. Relative paths inside documents resolve against the registry
root: given explicitly, or the folder holding the document's models/ or fleets/ folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fleet.spec import fleetspec, manifest
from fleet.spec.problems import Problem, ValidationFailed
from fleet.spec.yamlsrc import YamlSourceError, load_yaml

__all__ = ["KINDS", "Problem", "ValidationFailed", "check_file", "discover", "kind_of", "validate_paths"]

# kind -> the function that checks a file of that kind (schema + what needs more than the schema)
KINDS: dict[str, Callable[[Path, Path | None], tuple[BaseModel | None, list[Problem]]]] = {
    manifest.KIND: manifest.check_manifest,
    fleetspec.KIND: fleetspec.check_fleet,
}


def kind_of(path: Path) -> str | None:
    """The document's own `kind:` field, or None when it has none (or cannot be parsed)."""
    try:
        data: Any = load_yaml(path).data
    except YamlSourceError:
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def check_file(path: Path, kind: str | None = None, root: Path | None = None) -> tuple[BaseModel | None, list[Problem]]:
    """Validate one document. `kind` is used when the file has no `kind:` field of its own."""
    path = Path(path)
    if not path.is_file():
        return None, [Problem(path, 1, "", "file not found")]
    own = kind_of(path)
    chosen = own or kind
    if chosen is None:
        return None, [Problem(path, 1, "kind", f"missing: say what this document is ({' or '.join(KINDS)})")]
    if chosen not in KINDS:
        return None, [Problem(path, 1, "kind", f"unknown kind {chosen!r} (expected {' or '.join(KINDS)})")]
    return KINDS[chosen](path, root)


def discover(paths: list[Path], root: Path) -> list[tuple[Path, str | None]]:
    """Expand directories into (file, expected kind); with no paths, models/**/manifest.yaml and fleets/*.yaml.

    The expected kind only stands in for a file without a `kind:` field: a file's own field wins."""
    if not paths:
        paths = [d for d in (root / "models", root / "fleets") if d.is_dir()]
    found: list[tuple[Path, str | None]] = []
    for p in paths:
        if not p.is_dir():
            found.append((p, None))
        elif p.resolve().name == "fleets":
            found += [(f, fleetspec.KIND) for f in sorted([*p.glob("*.yaml"), *p.glob("*.yml")])]
        else:
            found += [(f, manifest.KIND) for f in sorted(p.rglob("manifest.yaml"))]
    return found


def validate_paths(paths: list[Path], root: Path | None = None, kind: str | None = None) -> tuple[list[Path], list[Problem]]:
    files = discover(list(paths), root or Path.cwd())
    problems: list[Problem] = []
    for f, expected in files:
        problems += check_file(f, kind or expected, root)[1]
    return [f for f, _ in files], problems
