"""Program runs shared by the tests here: each stack's program runs once per session (about 0.5 s each)."""

from __future__ import annotations

import pytest

from .harness import FIXTURES, ProgramRun, run_program, stack_config


@pytest.fixture(scope="session")
def dev() -> ProgramRun:
    """pulumi/Pulumi.dev.yaml as committed."""
    return run_program("dev", stack_config("dev"))


@pytest.fixture(scope="session")
def prod() -> ProgramRun:
    """pulumi/Pulumi.prod.yaml as committed."""
    return run_program("prod", stack_config("prod"))


@pytest.fixture(scope="session")
def fixture_run() -> ProgramRun:
    """dev, with the fixture rule file, our own device CA bundle, and a GitHub OIDC provider made by the stack."""
    return run_program("dev", stack_config(
        "dev",
        alertRulesGlob=str(FIXTURES / "rules" / "*.rules.yml"),
        deviceCa={"certificateBundleFile": str(FIXTURES / "device-ca.pem")},
        githubOidcProviderArn=None,
        githubBranch="release",
    ))


@pytest.fixture(scope="session", params=["dev", "prod"])
def stack(request, dev, prod) -> tuple[str, ProgramRun]:
    """Each committed stack in turn, with its name (to read its config)."""
    return request.param, {"dev": dev, "prod": prod}[request.param]
