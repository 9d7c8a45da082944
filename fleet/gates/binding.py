"""Is this model version gated? A passing gate report bound to the manifest's artifact sha256, or a waiver.

Used by `edgecv validate` and `edgecv rollout plan|apply`: a release whose models are not gated is refused.

- The report is the `report.json` that `edgecv eval` wrote, named by the manifest's `gate_report`
  (a report.md path means the report.json beside it). It must be for this model version
  (`model` = name@version), for these bytes (`artifact.sha256` = the manifest's) and say `passed`.
- A `gates.waiver` {who, why, until} stands in for the report until its date; past it, it is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Literal

from fleet.spec.fleetspec import load_fleet
from fleet.spec.manifest import ModelManifest, Waiver, load_manifest
from fleet.spec.problems import Problem, ValidationFailed
from fleet.spec.validate import kind_of
from fleet.spec.yamlsrc import YamlSourceError, load_yaml

State = Literal["passed", "waived", "refused"]
REPORT_KIND = "gate-report"  # report.json kind written by `edgecv eval`


@dataclass(frozen=True)
class GateStatus:
    manifest: Path
    ref: str
    state: State
    reason: str
    field: str = "gate_report"  # the manifest field the reason is about
    waiver: Waiver | None = None

    @property
    def ok(self) -> bool:
        return self.state != "refused"

    def line(self, markdown: bool = False) -> str:
        if self.state == "waived" and self.waiver is not None:
            w = self.waiver
            text = f"{self.ref} ships WITHOUT a passing gate report: waived by {w.who} until {w.until}: {w.why}"
            return f"**{text}**" if markdown else text
        if self.state == "passed":
            return f"{self.ref}: gates passed ({self.reason})"
        return f"{self.ref}: refused: {self.field}: {self.reason}"


def today_utc() -> date:
    return datetime.now(timezone.utc).date()


def report_json(gate_report: str, root: Path) -> Path:
    path = root / gate_report
    return path.with_name("report.json") if path.suffix == ".md" else path


def gate_status(manifest: ModelManifest, path: Path, root: Path, today: date | None = None) -> GateStatus:
    today = today or today_utc()
    waiver = manifest.gates.waiver
    if waiver is not None:
        if waiver.until < today:
            return GateStatus(path, manifest.ref, "refused", f"the waiver by {waiver.who} ended on {waiver.until}: "
                              "gate this version (edgecv eval) or renew the waiver on purpose", "gates.waiver.until")
        return GateStatus(path, manifest.ref, "waived", f"waived until {waiver.until}", "gates.waiver", waiver)
    if not manifest.gate_report:
        return GateStatus(path, manifest.ref, "refused", "missing: no gate report for this version "
                          "(run `edgecv eval MANIFEST` and commit its report, or add gates.waiver)")
    report = report_json(manifest.gate_report, root)
    try:
        doc = json.loads(report.read_text())
    except FileNotFoundError:
        return GateStatus(path, manifest.ref, "refused", f"gate report not found: {report}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return GateStatus(path, manifest.ref, "refused", f"unreadable gate report {report}: {exc}")
    if not isinstance(doc, dict) or doc.get("kind") != REPORT_KIND or not isinstance(doc.get("artifact"), dict):
        return GateStatus(path, manifest.ref, "refused", f"{report} was not written by `edgecv eval` "
                          "(no artifact sha256 in it): nothing binds its verdict to this artifact")
    if doc.get("model") != manifest.ref:
        return GateStatus(path, manifest.ref, "refused", f"{report} is the report of {doc.get('model')}, "
                          f"not {manifest.ref}")
    sha = doc["artifact"].get("sha256")
    if sha != manifest.artifact.sha256:
        return GateStatus(path, manifest.ref, "refused", f"{report} judged artifact sha256 {sha}; the manifest's "
                          f"artifact is {manifest.artifact.sha256}: run `edgecv eval` on this artifact")
    if doc.get("passed") is not True:
        failed = (doc.get("accuracy") or {}).get("failed_classes") or []
        return GateStatus(path, manifest.ref, "refused", f"{report} says FAIL"
                          + (f" ({', '.join(failed)})" if failed else ""))
    return GateStatus(path, manifest.ref, "passed", f"{report.name} for sha256 {sha[:12]}…, {doc.get('time')}")


def release_gates(manifests: dict[str, ModelManifest], root: Path, today: date | None = None) -> list[GateStatus]:
    """The gate status of every model of a fleet file's release (keys: manifest paths relative to root)."""
    return [gate_status(m, root / rel, root, today) for rel, m in manifests.items()]


def refusal(statuses: list[GateStatus]) -> str | None:
    """One message naming every model that is not gated, or None when the release may roll out."""
    bad = [s.line() for s in statuses if not s.ok]
    return "models not gated: " + "; ".join(bad) if bad else None


def require_gated(fleet_file: Path, manifests: dict[str, ModelManifest], today: date | None = None) -> list[GateStatus]:
    """The rollout's check: every model of the fleet file's release gated, else PlanRefused with every reason."""
    from fleet.rollout.planner import PlanRefused
    from fleet.spec.base import registry_root_of

    statuses = release_gates(manifests, registry_root_of(fleet_file), today)
    why = refusal(statuses)
    if why:
        raise PlanRefused(why)
    return statuses


def render(statuses: list[GateStatus], markdown: bool) -> str:
    """The gate lines of a plan: a waiver is bold in the PR comment."""
    if markdown:
        return "\n".join(["#### Model gate reports", "", *[f"- {s.line(True)}" for s in statuses], ""])
    return "\n".join(f"gates: {s.line()}" for s in statuses)


def render_refused(fleet_file: Path, reason: str, markdown: bool) -> str:
    if markdown:
        return f"### `{fleet_file.name}`: refused\n\n**{reason}**\n"
    return f"{fleet_file.name}: refused: {reason}"


def _problem(status: GateStatus) -> Problem:
    try:
        line = load_yaml(status.manifest).line_of(tuple(status.field.split(".")))
    except (YamlSourceError, OSError):
        line = 1
    return Problem(status.manifest, line, status.field, status.reason)


def binding_problems(files: list[Path], root: Path | None = None, today: date | None = None) -> list[Problem]:
    """For `edgecv validate` (files that passed the schema): every model a fleet file releases must be gated;
    any manifest's expired waiver or declared gate report that does not bind is an error too."""
    from fleet.spec.base import registry_root_of

    problems: list[Problem] = []
    for f in files:
        kind = kind_of(f)
        base = root or registry_root_of(f)
        try:
            if kind == "fleet":
                spec, manifests = load_fleet(f, root)
                for s in release_gates(manifests, base, today):
                    if not s.ok:
                        p = _problem(s)
                        problems.append(Problem(p.path, p.line, p.field, f"{p.message} (released by {f})"))
            elif kind == "model-manifest":
                m = load_manifest(f, root)
                s = gate_status(m, f, base, today)
                if not s.ok and (m.gate_report or m.gates.waiver):
                    problems.append(_problem(s))
        except ValidationFailed:
            continue  # the schema problems are reported already
    return list(dict.fromkeys(problems))
