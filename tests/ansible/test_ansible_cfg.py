"""ansible.cfg names no default inventory: a forgotten -i fails instead of reaching the example's hosts."""

from __future__ import annotations

import json
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


def test_plays_run_under_mitogen_and_the_timing_callback_says_where_the_time_went(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env |= {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "HOME": str(tmp_path), "EDGECV_TASK_TIMING_TOP": "1"}
    playbook = tmp_path / "timed.yml"
    play = {"hosts": "all", "connection": "local", "gather_facts": False}
    playbook.write_text(
        json.dumps([
            # Under Mitogen a module runs in its interpreter, titled python(mitogen:user@host:pid).
            {**play, "name": "Nap", "tasks": [
                {"name": "Who runs modules", "shell": "tr '\\0' ' ' < /proc/$PPID/cmdline", "register": "runner"},
                {"name": "Nap a while", "command": "sleep 2"},
                {"name": "It was Mitogen", "assert": {"that": "'(mitogen:' in runner.stdout"}}]},
            {**play, "name": "Quick", "tasks": [{"name": "Say so", "debug": {"msg": "quick"}}]},
        ])
    )  # fmt: skip
    run = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(playbook)],
        cwd=REPO, env={**env, "ANSIBLE_PYTHON_INTERPRETER": sys.executable}, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    timing = run.stdout[run.stdout.index("PLAY TIMING") :].splitlines()
    plays = {line.split()[1]: float(line.split()[0].rstrip("s")) for line in timing[1:3]}
    assert plays["Nap"] >= 2 > plays["Quick"], timing
    # One task, the slowest: the nap (longer than starting Mitogen on a loaded machine).
    assert timing[3].startswith("TASK TIMING") and timing[4].endswith("Nap a while") and len(timing) == 5, timing
