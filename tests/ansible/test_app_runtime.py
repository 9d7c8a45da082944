"""The inference_app role installs the app with --no-deps: its package list must cover every app import.

The app grows; this catches a new import before a device does (it needs no test hosts, only the wheelhouse).
"""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.ansible.support import REPO, build_wheelhouse

pytestmark = [pytest.mark.ansible]


@pytest.mark.slow
def test_role_packages_cover_every_app_module(tmp_path):
    wheels = build_wheelhouse(tmp_path / "wheelhouse")
    defaults = yaml.safe_load((REPO / "roles/inference_app/defaults/main.yml").read_text())
    packages = [
        p.replace("{{ inference_app_version }}", defaults["inference_app_version"])
        for p in defaults["inference_app_packages"]
    ]
    venv = tmp_path / "venv"
    # The venv alone, as on a device: no PYTHONPATH into the repository (its egg-info would pass for the wheel).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/pip"), "install", "-q", "--no-index", "--no-deps", "--find-links", str(wheels), *packages]
    subprocess.run(pip, check=True, capture_output=True, env=env)
    # Every module of the device package, sub-packages included (the layout nests them).
    modules = sorted(".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "app").rglob("*.py"))
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    res = subprocess.run(
        [str(venv / "bin/python"), "-c", code, *modules], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert res.returncode == 0, f"an app module imports a package missing from inference_app_packages:\n{res.stderr}"
    # The CLI entry point the unit runs.
    assert (
        subprocess.run([str(venv / "bin/edgecv"), "app", "run", "--help"], capture_output=True, env=env).returncode == 0
    )


def test_role_installs_exactly_the_device_pins():
    """constraints-device.txt (what `make test-py310` tests under CPython 3.10) is what the role installs."""
    defaults = yaml.safe_load((REPO / "roles/inference_app/defaults/main.yml").read_text())
    role = sorted(p for p in defaults["inference_app_packages"] if not p.startswith("edgecv-fleet"))
    lines = (REPO / "constraints-device.txt").read_text().splitlines()
    assert role == sorted(ln for ln in lines if ln and not ln.startswith("#"))
