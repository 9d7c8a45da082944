"""Small valid model manifests for tests: a dict to edit, or a file written under a throwaway registry."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from fleet.repo import REPO_ROOT

ARTIFACT = b"not really an onnx model, but bytes with a known digest"


def manifest_dict(artifact_uri: str, data: bytes = ARTIFACT) -> dict:
    return {
        "kind": "model-manifest",
        "name": "tiny",
        "version": "1.2.3",
        "task": "detection",
        "classes": ["person", "car"],
        "input": {
            "name": "images",
            "shape": [3, 64, 64],
            "channel_order": "BGR",
            "mean": [0, 0, 0],
            "std": [255, 255, 255],
        },
        "outputs": [
            {"name": "boxes", "shape": [-1, 4]},
            {"name": "scores", "shape": [-1]},
            {"name": "classes", "shape": [-1], "dtype": "INT64"},
        ],
        "decoder": {
            "name": "boxes_scores_classes",
            "params": {"boxes_output": "boxes", "scores_output": "scores", "classes_output": "classes"},
        },
        "artifact": {
            "uri": artifact_uri,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "format": "onnx",
        },
        "provenance": {"source": "test", "licence": "Apache-2.0", "conversion": "none"},
    }


FIXTURES = REPO_ROOT / "tests" / "fixtures" / "gates"
CLASSES = ["person", "bicycle", "car", "dog"]


def write_manifest(root: Path, gates: dict | None = None, budget: dict | None = None,
                   classes: list[str] | None = None) -> Path:
    """A valid manifest under ROOT/models/tiny/ (the artifact on s3://, so no file is needed)."""
    doc = {
        "kind": "model-manifest",
        "name": "tiny",
        "version": "1.0.0",
        "classes": classes or CLASSES,
        "input": {"name": "images", "shape": [3, 64, 64]},
        "outputs": [{"name": "boxes", "shape": [-1, 4]}, {"name": "scores", "shape": [-1]},
                    {"name": "classes", "shape": [-1], "dtype": "INT64"}],
        "decoder": {"name": "boxes_scores_classes",
                    "params": {"boxes_output": "boxes", "scores_output": "scores", "classes_output": "classes"}},
        "artifact": {"uri": "s3://models/tiny.onnx", "sha256": "0" * 64, "size": 1, "format": "onnx"},
        "provenance": {"source": "test", "licence": "Apache-2.0", "conversion": "none"},
    }
    if gates is not None:
        doc["gates"] = gates
    if budget is not None:
        doc["latency_budget_ms"] = budget
    path = root / "models" / "tiny" / "manifest.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
