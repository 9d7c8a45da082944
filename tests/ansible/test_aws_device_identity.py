"""Role aws_device_identity, run for real by ansible-playbook against this machine (connection local), with
every path it writes redirected into a temporary folder: sha256 of the helper enforced, key and config 0600,
and the AWS profile it writes gives credentials through its credential_process (the signing-helper stand-in).
The nspawn test hosts are not needed for a role that only writes files."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import aws_signing_helper_standin as standin

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = "- hosts: localhost\n  connection: local\n  gather_facts: false\n  roles: [aws_device_identity]\n"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def run_role(tmp: Path, **overrides) -> subprocess.CompletedProcess:
    helper = tmp / "helper-src"
    helper.write_text(f"#!/bin/sh\nexec {sys.executable} {standin.__file__} \"$@\"\n")
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    arn = "arn:aws:rolesanywhere:eu-west-1:111122223333"
    variables = {
        "aws_device_identity_users": [user],
        "aws_device_identity_dir": str(tmp / "identity"),
        "aws_device_identity_helper_path": str(tmp / "bin" / "aws_signing_helper"),
        "aws_device_identity_helper_src": str(helper),
        "aws_device_identity_helper_sha256": hashlib.sha256(helper.read_bytes()).hexdigest(),
        "vault_aws_device_certificate": "-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n",
        "vault_aws_device_private_key": "-----BEGIN PRIVATE KEY-----\nstand-in\n-----END PRIVATE KEY-----\n",
        "cloud_region": "eu-west-1",
        "ansible_python_interpreter": sys.executable,
        "cloud_device_trust_anchor_arn": f"{arn}:trust-anchor/ta",
        "cloud_device_profile_arn": f"{arn}:profile/p",
        "cloud_device_role_arn": "arn:aws:iam::111122223333:role/device",
        **overrides,
    }
    (tmp / "bin").mkdir(exist_ok=True)
    (tmp / "vars.yml").write_text(yaml.safe_dump(variables))
    (tmp / "play.yml").write_text(PLAYBOOK)
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_CONFIG": str(tmp / "none.cfg"),
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"}
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
                           "-e", f"@{tmp / 'vars.yml'}", str(tmp / "play.yml")],
                          capture_output=True, text=True, env=env, cwd=tmp, timeout=240)


def test_the_role_writes_a_private_identity_whose_profile_yields_credentials(tmp_path, monkeypatch):
    run = run_role(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    [user_dir] = (tmp_path / "identity").iterdir()
    assert stat.S_IMODE(user_dir.stat().st_mode) == 0o700
    for name in ("device.crt", "device.key", "config"):
        assert stat.S_IMODE((user_dir / name).stat().st_mode) == 0o600, name
    # The profile as any AWS SDK reads it: botocore runs the credential_process.
    import botocore.session

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(user_dir / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    creds = botocore.session.Session(profile="edgecv-device").get_credentials().get_frozen_credentials()
    assert (creds.access_key, creds.secret_key) == (standin.ACCESS_KEY, standin.SECRET_KEY)


def test_a_helper_with_the_wrong_sha256_is_not_installed(tmp_path):
    run = run_role(tmp_path, aws_device_identity_helper_sha256="0" * 64)
    assert run.returncode != 0
    assert "is not aws_device_identity_helper_sha256" in run.stdout
    assert not (tmp_path / "bin" / "aws_signing_helper").exists()
    assert not (tmp_path / "identity").exists()
