"""`edgecv release build`: the build context `balena deploy` turns into a release.

    DIR/docker-compose.yml, balena.yml            from balena/
    DIR/triton/model-repository/<model>/...       `edgecv triton render` (onnxruntime backend), each
                                                  artifact sha256-checked against its manifest on copy
    DIR/triton/model-repository/SHA256SUMS        every file of the repository, checked again at start
    DIR/triton/integrity.py                       that start-up check (app/integrity.py)
    DIR/app/wheels/edgecv_fleet-*.whl             the app, built from this repository
    DIR/app/registry/models/<model>/...           manifests + artifacts (the app checks them at start)
    DIR/release.json                              release tags, models with their gate status, every
                                                  file's sha256 and the context's size

Only a fleet file whose models are gated (a passing report bound to their sha256, or a waiver) builds.
The context is assembled in a temporary folder beside DIR and swapped in whole: never half a context.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from app.integrity import digests, write_sums
from fleet.atomic import swap_dir
from fleet.gates.binding import require_gated
from fleet.repo import REPO_ROOT
from fleet.rollout.planner import PlanRefused
from fleet.spec.fleetspec import load_fleet
from fleet.spec.problems import ValidationFailed
from fleet.triton.render import RenderError, render


class ReleaseInputError(ValueError):
    """Bad input (exit 2): an invalid fleet file or manifest, an artifact that is not the reviewed one."""


class ReleaseRefused(ValueError):
    """A model of the release is not gated (exit 1)."""


@dataclass
class BuiltRelease:
    out: Path
    tags: dict[str, str]
    files: int
    bytes: int


def release_tags_of(fleet_file: Path) -> dict[str, str]:
    """The tags the release build sets: fleet.spec.fleetspec.release_tags, the controller's own definition."""
    try:
        spec, manifests = load_fleet(fleet_file)
    except ValidationFailed as exc:
        raise ReleaseInputError(f"invalid fleet file:\n{exc}") from exc
    return spec.release_tags(manifests.values())


def build_wheel(dest: Path, root: Path = REPO_ROOT) -> Path:
    """The app wheel from the source tree (no dependencies: the image installs them pinned).

    Builds of one tree take turns: without build isolation setuptools stages every build in the tree's own
    build/, and two at once collide there ("File exists: build/bdist.../edgecv_fleet-0.1.0.dist-info")."""
    dest.mkdir(parents=True, exist_ok=True)
    (root / "build").mkdir(exist_ok=True)
    with (root / "build" / ".wheel.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                               "--wheel-dir", str(dest), str(root)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"building the app wheel failed:\n{done.stderr[-2000:]}")
    wheels = sorted(dest.glob("edgecv_fleet-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one edgecv_fleet wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def build(fleet_file: Path, out: Path, wheel: Path | None = None, root: Path = REPO_ROOT,
          balena_dir: Path | None = None) -> BuiltRelease:
    fleet_file, out = Path(fleet_file), Path(out)
    try:
        spec, manifests = load_fleet(fleet_file, root)
    except ValidationFailed as exc:
        raise ReleaseInputError(f"invalid fleet file:\n{exc}") from exc
    try:
        gates = require_gated(fleet_file, manifests)
    except PlanRefused as exc:
        raise ReleaseRefused(str(exc)) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(balena_dir or root / "balena", tmp, dirs_exist_ok=True)
        repo = tmp / "triton" / "model-repository"
        registry = tmp / "app" / "registry"
        for rel, m in manifests.items():
            try:
                model_dir = render(m, repo, "onnxruntime", root=root)
            except RenderError as exc:
                raise ReleaseInputError(f"{root / rel}: artifact.sha256: {exc}") from exc
            (registry / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, registry / rel)
            artifact = m.artifact.local_path(registry)
            artifact.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(model_dir / "1" / "model.onnx", artifact)  # the bytes render just checked
        write_sums(repo)
        shutil.copy2(root / "app" / "integrity.py", tmp / "triton" / "integrity.py")
        shutil.copy2(root / "constraints.txt", tmp / "app" / "constraints.txt")
        wheels = tmp / "app" / "wheels"
        if wheel:
            wheels.mkdir(parents=True, exist_ok=True)
            shutil.copy2(wheel, wheels / Path(wheel).name)
        else:
            build_wheel(wheels, root)
        files = digests(tmp)
        size = sum((tmp / rel).stat().st_size for rel in files)
        tags = spec.release_tags(manifests.values())
        doc = {
            "fleet": spec.fleet,
            "tags": tags,
            "models": [{"manifest": rel, "ref": m.ref, "sha256": m.artifact.sha256, "gates": g.line()}
                       for (rel, m), g in zip(manifests.items(), gates, strict=True)],
            "files": files,
            "bytes": size,
        }
        (tmp / "release.json").write_text(json.dumps(doc, indent=1) + "\n")
        os.chmod(tmp, 0o755)
        swap_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuiltRelease(out, tags, len(files) + 1, size)
