"""The inference_app role installs the app with --no-deps: its package list must cover every app import.

The app grows; this catches a new import before a device does (it needs no test hosts, only the wheelhouse).
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.ansible.support import REPO, build_wheelhouse

pytestmark = [pytest.mark.ansible, pytest.mark.slow]


def test_role_packages_cover_every_app_module(tmp_path):
    wheels = build_wheelhouse(tmp_path / "wheelhouse")
    defaults = yaml.safe_load((REPO / "roles/inference_app/defaults/main.yml").read_text())
    packages = [
        p.replace("{{ inference_app_version }}", defaults["inference_app_version"])
        for p in defaults["inference_app_packages"]
    ]
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/pip"), "install", "-q", "--no-index", "--no-deps", "--find-links", str(wheels), *packages]
    subprocess.run(pip, check=True, capture_output=True)
    modules = sorted(p.stem for p in (REPO / "app").glob("*.py") if p.stem != "__init__")
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module('app.' + m)\n"
    res = subprocess.run([str(venv / "bin/python"), "-c", code, *modules], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, f"an app module imports a package missing from inference_app_packages:\n{res.stderr}"
    # The CLI entry point the unit runs.
    assert subprocess.run([str(venv / "bin/edgecv"), "app", "run", "--help"], capture_output=True).returncode == 0
