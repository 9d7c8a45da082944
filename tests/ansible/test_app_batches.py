"""playbooks/app.yml's batches never mix sites: the role's rollout order and the batched play's own `hosts` and
`serial`, run by ansible-playbook on controller-only hosts (no test hosts needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.ansible.support import REPO

pytestmark = [pytest.mark.ansible]

SITES = {"site_a": ["a1", "a2", "a3", "a4"], "site_b": ["b1", "b2"], "site_c": ["c1"]}


def batches(tmp_path: Path, *args: str) -> list[list[str]]:
    """The batches app.yml's second play would run, as ansible_play_batch per batch."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    app = yaml.safe_load((REPO / "playbooks/app.yml").read_text())
    staged, batched = app[0], app[1]
    inventory = {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            "children": {
                "sites": {
                    # site_c's group listed first but its host last in the file order of hosts: order follows sites
                    "children": {s: {"hosts": dict.fromkeys(h), "vars": {"site_id": s.replace("_", "-")}}
                                 for s, h in SITES.items()}
                }
            },
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    log = tmp_path / "batches.jsonl"
    playbook = [
        {
            "name": "The order, as app.yml's first play computes it",
            "hosts": staged["hosts"],
            "gather_facts": False,
            "tasks": [t for t in staged["tasks"] if t["ansible.builtin.include_role"].get("tasks_from") == "rollout_order.yml"],
        },
        {
            "name": "app.yml's batched play, recording each batch",
            "hosts": batched["hosts"],
            "serial": batched["serial"],
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Record the batch",
                    "ansible.builtin.shell": f"echo '{{{{ ansible_play_batch | to_json }}}}' >> {log}",
                    "run_once": True,
                }
            ],
        },
    ]
    (tmp_path / "pb.yml").write_text(yaml.safe_dump(playbook, sort_keys=False))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(REPO / "roles")}
    ansible = Path(sys.executable).parent / "ansible-playbook"
    res = subprocess.run(
        [str(ansible), "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "pb.yml"), *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_without_limit_each_site_alone_first_device_then_the_rest(tmp_path):
    # serial [1, 100%]: across the fleet the second batch would hold every other device of every site.
    got = batches(tmp_path, "-e", '{"inference_app_serial": ["1", "100%"]}')
    assert got == [["a1"], ["a2", "a3", "a4"], ["b1"], ["b2"], ["c1"]]


def test_default_serial_halves_each_site_and_limit_keeps_sites_apart(tmp_path):
    assert batches(tmp_path) == [["a1"], ["a2", "a3"], ["a4"], ["b1"], ["b2"], ["c1"]]
    limited = batches(tmp_path / "limited", "--limit", "a2,a3,b1,b2")
    assert limited == [["a2"], ["a3"], ["b1"], ["b2"]]
