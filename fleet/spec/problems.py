"""Validation problems that point at file, line and field, and loading a document into its schema."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fleet.spec.yamlsrc import YamlDoc, YamlSourceError, load_yaml


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
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here; is it a typo?)"
        out.append(Problem(doc.path, doc.line_of(loc), _field_name(loc), msg))
    return out


M = TypeVar("M", bound=BaseModel)
ExtraChecks = Callable[[YamlDoc, Any], list[Problem]]


def check_document(path: Path, model: type[M], extra_checks: ExtraChecks | None = None) -> tuple[M | None, list[Problem]]:
    """Parse a YAML file into `model`: the object (or None) and every problem found, with line numbers."""
    try:
        doc = load_yaml(path)
    except YamlSourceError as exc:
        return None, [Problem(path, exc.line, "", exc.message)]
    try:
        obj = model.model_validate(doc.data)
    except ValidationError as exc:
        return None, problems_from_validation(doc, exc)
    return obj, (extra_checks(doc, obj) if extra_checks else [])


def load_document(path: Path, model: type[M], extra_checks: ExtraChecks | None = None) -> M:
    """Like check_document, but raises ValidationFailed with every problem."""
    obj, problems = check_document(Path(path), model, extra_checks)
    if problems or obj is None:
        raise ValidationFailed(problems)
    return obj
