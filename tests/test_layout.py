"""The layout ARCHITECTURE.md promises: every path it names exists, and the import rules hold."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from fleet.repo import REPO_ROOT

ARCHITECTURE = REPO_ROOT / "ARCHITECTURE.md"


def named_paths() -> list[str]:
    """Backquoted repository paths in ARCHITECTURE.md (`app/pipeline/capture.py`, `fleet/spec/`, ...)."""
    found = re.findall(r"`([A-Za-z_][\w.-]*/[\w./-]*)`", ARCHITECTURE.read_text())
    return sorted({p for p in found if not p.startswith(("http", "<"))})


def test_every_path_architecture_names_exists():
    missing = [p for p in named_paths() if not (REPO_ROOT / p.split(" ")[0]).exists()]
    assert named_paths(), "ARCHITECTURE.md names no paths?"
    assert missing == [], f"ARCHITECTURE.md names paths that do not exist: {missing}"


def test_every_package_of_app_and_fleet_is_on_the_map():
    """A new package must be added to the map (ARCHITECTURE.md) so a newcomer can find it."""
    text = ARCHITECTURE.read_text()
    packages = [p.parent.relative_to(REPO_ROOT).as_posix() for root in ("app", "fleet")
                for p in (REPO_ROOT / root).rglob("__init__.py")
                if "migrations" not in p.parts and p.parent != REPO_ROOT / root]
    absent = [p for p in packages if f"`{p}/`" not in text and f"`{p}" not in text]
    assert absent == [], f"packages missing from ARCHITECTURE.md: {absent}"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def modules(root: str) -> list[Path]:
    return sorted(p for p in (REPO_ROOT / root).rglob("*.py") if "migrations" not in p.parts)


def ours(name: str) -> bool:
    return name.split(".")[0] in ("app", "fleet")


@pytest.mark.parametrize("path", modules("fleet/spec"), ids=lambda p: p.name)
def test_the_contracts_import_nothing_else_of_ours(path: Path):
    bad = sorted(m for m in imports_of(path) if ours(m) and not m.startswith("fleet.spec"))
    assert bad == [], f"{path.relative_to(REPO_ROOT)} imports {bad}"


@pytest.mark.parametrize("path", modules("app"), ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_the_device_app_depends_only_on_the_contracts(path: Path):
    bad = sorted(m for m in imports_of(path) if ours(m) and not m.startswith(("app", "fleet.spec")))
    assert bad == [], f"{path.relative_to(REPO_ROOT)} imports {bad}"


def test_the_control_plane_imports_the_app_only_where_it_wires_the_system():
    # The demo wires everything; eval judges an artifact with the device's own preprocessing and decoder;
    # the release build writes the sums the device's start-up check reads.
    wiring = {REPO_ROOT / "fleet" / p for p in ("demo.py", "gates/eval.py", "release/build.py")}
    bad = {p.relative_to(REPO_ROOT).as_posix(): sorted(m for m in imports_of(p) if m.split(".")[0] == "app")
           for p in modules("fleet") if p not in wiring}
    assert {k: v for k, v in bad.items() if v} == {}


def test_click_lives_in_cli_modules():
    allowed = {"cli.py", "demo.py"}
    bad = [p.relative_to(REPO_ROOT).as_posix() for root in ("app", "fleet") for p in modules(root)
           if p.name not in allowed and "click" in {m.split(".")[0] for m in imports_of(p)}]
    assert bad == []
