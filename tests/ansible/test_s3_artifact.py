"""The triton role's artifact tasks with an `s3://` manifest URI, run by real ansible-playbook on localhost.

The controller presigns the URI with boto3 against a real S3 API (moto's server on 127.0.0.1, reached
through AWS_ENDPOINT_URL as a site's own S3-compatible store would be) and get_url fetches it,
verifying the manifest's sha256: the right bytes land in the release directory; a wrong sha256 or a
missing object fails the play and leaves nothing there.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml

from fleet.local.s3 import local_s3
from tests.ansible.support import REPO

pytestmark = [pytest.mark.ansible, pytest.mark.integration]

BUCKET = "edgecv-artifacts"
KEY = "nanodet-m/1.0.0/model.onnx"
PAYLOAD = os.urandom(4096)


@pytest.fixture(scope="module")
def s3():
    with local_s3(BUCKET) as url:
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").put_object(Bucket=BUCKET, Key=KEY, Body=PAYLOAD)
        yield url


def fetch(s3_url: str, tmp_path: Path, uri: str, sha256: str) -> tuple[subprocess.CompletedProcess, Path]:
    release = tmp_path / "release"
    model = {"name": "nanodet-m", "artifact": {"uri": uri, "sha256": sha256, "format": "onnx"}}
    play = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        # An explicit localhost gets interpreter discovery; the controller's Python is the one with boto3.
        "vars": {"triton_model": model, "triton_release_dir": str(release),
                 "ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "tasks": [{"ansible.builtin.include_role": {"name": "triton", "tasks_from": "artifact"}}],
    }]
    playbook = tmp_path / "artifact.yml"
    playbook.write_text(yaml.safe_dump(play))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
           "AWS_ENDPOINT_URL": s3_url, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
    bindir = Path(sys.executable).parent
    run = subprocess.run([str(bindir / "ansible-playbook"), "-i", "localhost,", str(playbook)],
                         env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    return run, release / "nanodet-m" / "1" / "model.onnx"


def test_s3_artifact_is_presigned_fetched_and_verified(s3, tmp_path):
    run, dest = fetch(s3, tmp_path, f"s3://{BUCKET}/{KEY}", hashlib.sha256(PAYLOAD).hexdigest())
    assert run.returncode == 0, run.stdout + run.stderr
    assert dest.read_bytes() == PAYLOAD


def test_wrong_sha256_fails_and_leaves_nothing(s3, tmp_path):
    run, dest = fetch(s3, tmp_path, f"s3://{BUCKET}/{KEY}", "0" * 64)
    assert run.returncode != 0
    assert "checksum" in run.stdout.lower()
    assert not dest.exists()


def test_missing_object_fails_and_leaves_nothing(s3, tmp_path):
    run, dest = fetch(s3, tmp_path, f"s3://{BUCKET}/nanodet-m/9.9.9/model.onnx", hashlib.sha256(PAYLOAD).hexdigest())
    assert run.returncode != 0
    assert "404" in run.stdout or "Not Found" in run.stdout
    assert not dest.exists()
