"""ansible.cfg names no default inventory: a forgotten -i fails instead of reaching the example's hosts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ansible.support import REPO

pytestmark = pytest.mark.ansible


def test_a_forgotten_inventory_is_an_error_not_the_example(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env |= {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "HOME": str(tmp_path)}  # no ~/.ansible.cfg of the user
    playbook = str(Path(sys.executable).parent / "ansible-playbook")
    run = subprocess.run(
        [playbook, "playbooks/site.yml", "--list-hosts"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert run.returncode != 0 and "No inventory was parsed" in run.stderr, run.stdout + run.stderr
    assert "jetson-" not in run.stdout
    # Named explicitly, the example's hosts are listed.
    run = subprocess.run(
        [playbook, "-i", "inventory/example", "playbooks/jetpack.yml", "--list-hosts"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and "jetson-north-01" in run.stdout, run.stdout + run.stderr
