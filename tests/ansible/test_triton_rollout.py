"""playbooks/triton.yml's switch on the converged lab: a site rolls one device first, a release Triton cannot
load is rolled back on that device and stops the site, old releases are pruned, and a fetch that would not
fit is refused before anything is downloaded. Real ansible-playbook runs, real Triton on the hosts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.ansible.conftest import MANIFEST
from tests.ansible.support import DEVICES, Ansible

pytestmark = [pytest.mark.ansible, pytest.mark.slow, pytest.mark.timeout(1200)]

BASE = yaml.safe_load(MANIFEST.read_text())
MODEL, VERSION = BASE["name"], BASE["version"]
RELEASES = "/var/lib/tritonserver/releases"


def release(ansible: Ansible, tmp_path: Path, version: str, artifact: bytes | None = None) -> list[str]:
    """ansible-playbook arguments for `version` of the model (a manifest in its own registry root); `artifact`
    replaces the model's bytes (in the lab's artifact store too, and handed to render), None keeps the bundled one."""
    root = tmp_path / version
    folder = root / "models" / MODEL
    folder.mkdir(parents=True)
    doc = {**BASE, "version": version}
    if artifact is None:
        shutil.copy(MANIFEST.parent / Path(BASE["artifact"]["uri"]).name, folder)
    else:
        rel = f"models/{MODEL}/{MODEL}-{version}.onnx"
        for where in (root, ansible.logdir / "artifacts"):  # the registry (render) and the store (devices)
            (where / rel).write_bytes(artifact)
        sha = hashlib.sha256(artifact).hexdigest()
        doc["artifact"] = {**BASE["artifact"], "uri": f"file://{rel}", "sha256": sha, "size": len(artifact)}
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    args = ["-e", f"triton_manifest={path}"]
    if artifact is not None:  # render resolves file:// URIs against the repository; --artifact names the copy
        render = f"{Path(ansible.env['PATH'].split(':')[0]) / 'edgecv'} triton render --artifact {root / rel}"
        args += ["-e", json.dumps({"triton_render_command": render})]  # JSON: the value has spaces
    return args


def started(ansible: Ansible, host: str) -> str:
    return ansible.lab.ssh(host, "systemctl show -p ActiveEnterTimestampMonotonic --value tritonserver").strip()


def live(ansible: Ansible, host: str) -> str:
    return ansible.lab.ssh(host, f"readlink /var/lib/tritonserver/models/{MODEL}").strip()


def served(ansible: Ansible, host: str) -> str:
    """The manifest ref (name@version) of the model Triton serves now; raises unless it is ready."""
    py = (
        f"import json, urllib.request as u; b = 'http://127.0.0.1:8000/v2/models/{MODEL}';"
        " assert u.urlopen(b + '/ready').status == 200;"
        " print(json.load(u.urlopen(b + '/config'))['parameters']['manifest']['string_value'])"
    )
    return ansible.lab.ssh(host, f'python3 -c "{py}"').strip()


def releases(ansible: Ansible, host: str) -> set[str]:
    return set(ansible.lab.ssh(host, f"ls {RELEASES}").split())


def test_release_that_cannot_load_rolls_back_the_first_device_and_stops_the_site(ansible, converged, tmp_path):
    first, second = DEVICES["depot_north"]
    second_started = started(ansible, second)
    # Passes its sha256 (the registry's bytes), but no ONNX Runtime can open it: Triton cannot load it.
    broken = release(ansible, tmp_path, "9.9.8", os.urandom(4096))

    run = ansible.playbook("triton.yml", "--limit", "depot_north", *broken)

    assert run.rc != 0, run.output[-4000:]
    assert run.recap[first]["failed"] == 1, run.output[-4000:]
    assert f"rolled back to {MODEL}-{VERSION}, which is serving again" in run.output, run.output[-4000:]
    # The first device is back on the previous release, and Triton serves it.
    assert live(ansible, first) == f"{RELEASES}/{MODEL}-{VERSION}/{MODEL}"
    assert served(ansible, first) == f"{MODEL}@{VERSION}"
    # The other device was never switched: same server process, same live release.
    assert started(ansible, second) == second_started
    assert live(ansible, second) == f"{RELEASES}/{MODEL}-{VERSION}/{MODEL}"
    assert served(ansible, second) == f"{MODEL}@{VERSION}"

    again = ansible.playbook("triton.yml", "--limit", "depot_north")
    assert again.rc == 0, again.output[-4000:]
    assert again.changed() == {first: 0, second: 0}, again.output[-6000:]
    assert started(ansible, second) == second_started


def test_switch_prunes_old_releases_but_never_the_live_or_previous_one(ansible, converged, tmp_path):
    host = DEVICES["yard_south"][0]
    # Three releases of earlier rollouts, each newer on disk than the live one: only the rule "never the
    # previous release" keeps the live one once a new release is switched to.
    ansible.lab.ssh(
        host,
        f"cd {RELEASES} && t=$(stat -c %Y {MODEL}-{VERSION}) && for i in 1 2 3; do"
        f" mkdir -p {MODEL}-0.$i/{MODEL} && touch -d @$((t + i)) {MODEL}-0.$i; done",
    )
    newer = release(ansible, tmp_path, "1.0.1")

    run = ansible.playbook("triton.yml", "--limit", "yard_south", *newer, "-e", "triton_keep_releases=2")

    assert run.rc == 0, run.output[-4000:]
    assert served(ansible, host) == f"{MODEL}@1.0.1"
    # The newest two (the live 1.0.1 and 0.3) and the previous one (1.0.0) stay.
    assert releases(ansible, host) == {f"{MODEL}-1.0.1", f"{MODEL}-0.3", f"{MODEL}-{VERSION}"}

    back = ansible.playbook("triton.yml", "--limit", "yard_south")  # the lab's model again, for other tests
    assert back.rc == 0, back.output[-4000:]
    assert served(ansible, host) == f"{MODEL}@{VERSION}"
    assert releases(ansible, host) == {f"{MODEL}-1.0.1", f"{MODEL}-0.3", f"{MODEL}-{VERSION}"}


def test_fetch_that_would_not_fit_is_refused_before_downloading(ansible, converged, tmp_path):
    host = DEVICES["yard_south"][0]
    before = started(ansible, host)
    newer = release(ansible, tmp_path, "9.9.7")
    margin = 10**15  # more than any test host's disk: the margin stands in for a full eMMC

    run = ansible.playbook(
        "triton.yml", "--limit", "yard_south", *newer, "-e", f"triton_free_space_margin_bytes={margin}"
    )

    assert run.rc != 0 and run.recap[host]["failed"] == 1, run.output[-4000:]
    needed = margin + BASE["artifact"]["size"]
    # Names the path, its free bytes and what is needed.
    assert f"{RELEASES} has " in run.output and " bytes free; " in run.output, run.output[-3000:]
    assert f"needs {needed} bytes there" in run.output, run.output[-3000:]
    assert f"{MODEL}-9.9.7" not in releases(ansible, host)  # not even an empty release directory
    assert started(ansible, host) == before
