"""Small shared pieces of the contracts: the strict pydantic base, a 3.10-safe StrEnum, file hashing."""

from __future__ import annotations

import enum
import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Every document model: unknown keys are errors (typos never pass silently), instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StrEnum(str, enum.Enum):
    """`enum.StrEnum` (3.11+) for Python 3.10: members are strings and print as their value."""

    def __str__(self) -> str:
        return str(self.value)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file, streamed: an artifact of gigabytes never sits in memory."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def registry_root_of(document: Path) -> Path:
    """The registry root a document's relative paths resolve against when none is given explicitly:
    the folder holding `models/` and `fleets/` (models/<name>/manifest.yaml, fleets/<fleet>.yaml)."""
    document = Path(document).resolve()
    for parent in document.parents:
        if parent.name in ("models", "fleets"):
            return parent.parent
    return document.parent
