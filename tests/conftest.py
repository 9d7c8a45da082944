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


ANSIBLE_LAB_TESTS = "tests/ansible/"


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # optional: the CPython 3.10 device venv has no xdist
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs on two pytest-xdist workers with `--dist loadgroup`: the tests under tests/ansible
    share one booted lab of throwaway hosts (a session fixture), so they are one work unit on one worker and
    the lab boots once; every other test is its own unit. (xdist's own loadgroup reads `xdist_group` marks
    from node ids it rewrites, which pytest 9 no longer lets it do: each worker would boot a lab.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class AnsibleLabTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return ANSIBLE_LAB_TESTS if nodeid.startswith(ANSIBLE_LAB_TESTS) else nodeid

    return AnsibleLabTogether(config, log)
