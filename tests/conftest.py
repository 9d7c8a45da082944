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
