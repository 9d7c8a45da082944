"""`edgecv models bump`: step 6 of the retraining loop — a new manifest version, ready for a pull request.

The new artifact must come with a gate report that passed (fail closed). The manifest is
rewritten in place with comments and key order kept (ruamel round-trip), so the PR diff shows
exactly what changed: version, artifact, gate report, reference histogram.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import semver
import yaml
from ruamel.yaml import YAML

from fleet.spec.base import registry_root_of, sha256_file
from fleet.spec.manifest import ConfidenceHistogram, load_manifest


class BumpError(ValueError):
    pass


def gate_verdict(report_dir: Path) -> bool:
    """True when the report says every gated class passed. Missing or unreadable: an error."""
    path = report_dir / "report.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BumpError(f"gate report {path} unreadable: {exc}") from exc
    passed = report.get("passed")
    if not isinstance(passed, bool):
        raise BumpError(f"gate report {path} has no boolean 'passed' verdict")
    return passed


def bump(manifest_path: Path, artifact: Path, gate_report: Path, reference: Path | None = None,
         part: str = "minor", root: Path | None = None) -> str:
    """Write the next version of `manifest_path`; returns the new version."""
    root = root or registry_root_of(manifest_path)
    current = load_manifest(manifest_path)
    if not gate_verdict(gate_report):
        raise BumpError(f"gates failed ({gate_report / 'report.json'}): a model that fails its gates is not bumped")
    version = str(getattr(semver.Version.parse(current.version), f"bump_{part}")())
    model_dir = manifest_path.parent
    new_artifact = model_dir / f"{current.name}-{version}{artifact.suffix}"
    shutil.copyfile(artifact, new_artifact)
    reports = model_dir / "reports" / version
    shutil.rmtree(reports, ignore_errors=True)
    shutil.copytree(gate_report, reports)

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 120
    doc = rt.load(manifest_path.read_text())
    doc["version"] = version
    doc["artifact"]["uri"] = f"file://{new_artifact.resolve().relative_to(root.resolve())}"
    doc["artifact"]["sha256"] = sha256_file(new_artifact)
    doc["artifact"]["size"] = new_artifact.stat().st_size
    doc["gate_report"] = str(reports.resolve().relative_to(root.resolve()) / "report.md")
    if reference:
        hist = ConfidenceHistogram.model_validate(yaml.safe_load(reference.read_text()))
        doc["reference_confidence"] = {"edges": list(hist.edges), "counts": list(hist.counts)}
    tmp = manifest_path.with_suffix(".yaml.tmp")
    with tmp.open("w") as f:
        rt.dump(doc, f)
    tmp.replace(manifest_path)
    return version
