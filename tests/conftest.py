"""Shared pytest setup. Area fixtures live in each folder's own conftest.py."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


# Fixtures shared across folders (a running Triton with nanodet-m, the telemetry stack) are plugins,
# so no test imports fixtures from another test module and session-scoped servers start once.
pytest_plugins = ["tests.support.triton_fixtures", "tests.support.telemetry_fixtures"]


def pytest_collection_modifyitems(items):
    """`make test` runs on two pytest-xdist workers (--dist loadgroup): the tests that share one booted lab of
    throwaway hosts (tests/ansible) stay together on one worker, so the lab boots once."""
    for item in items:
        if "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ansible-lab"))
