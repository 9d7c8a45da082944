"""Journald shipping for real: systemd-journal-upload on each converged device sends to systemd-journal-remote
on the bridge; a line logged on a device arrives, also one logged while the receiver was down."""

from __future__ import annotations

import secrets
import time

import pytest

from tests.ansible.support import DEVICES

pytestmark = [pytest.mark.ansible, pytest.mark.slow, pytest.mark.timeout(1800)]

HOSTS = [h for hosts in DEVICES.values() for h in hosts]


def _arrives(receiver, tag: str, expected: set[str], timeout: float = 45) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = set(receiver.messages(tag))
        if expected <= got:
            return got
        time.sleep(1)
    return set(receiver.messages(tag))


def test_a_line_logged_on_each_device_reaches_the_receiver(ansible, converged, journal_receiver):
    tag = f"edgecv-ship-{secrets.token_hex(3)}"
    for name in HOSTS:
        ansible.lab.ssh(name, f"logger -t {tag} 'hello from {name}'")
    expected = {f"hello from {name}" for name in HOSTS}
    assert _arrives(journal_receiver, tag, expected) >= expected


def test_lines_logged_while_the_receiver_is_down_arrive_when_it_is_back(ansible, converged, journal_receiver):
    name, tag = "jetson-south-01", f"edgecv-outage-{secrets.token_hex(3)}"
    journal_receiver.stop()
    try:
        ansible.lab.ssh(name, f"logger -t {tag} 'during the outage'")
        time.sleep(5)  # upload fails and retries (telemetry_journal_upload_retry_sec: 2 in the lab)
        assert journal_receiver.messages(tag) == []
        state = ansible.lab.ssh(name, "systemctl show -p ActiveState --value systemd-journal-upload").strip()
        assert state in ("activating", "active", "failed") and state != "inactive"
    finally:
        journal_receiver.start()
    assert _arrives(journal_receiver, tag, {"during the outage"}) == {"during the outage"}
