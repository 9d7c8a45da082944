"""playbooks/app.yml on the converged lab: a release that cannot become ready is rolled back on the site's
first device, which is ready again, and the run stops before the rest of the site; a release that becomes
ready keeps the one it replaced as the previous release and prunes the older ones."""

from __future__ import annotations

import pytest

from tests.ansible.support import DEVICES

pytestmark = [pytest.mark.ansible, pytest.mark.slow, pytest.mark.timeout(1800)]  # the first test of a session waits for the converge

NORTH = DEVICES["depot_north"]
LIVE = "readlink -f /opt/edgecv/venv"
STATE = (
    f"{LIVE}; sha256sum /etc/edgecv/app.yaml /etc/systemd/system/edgecv-app.service;"
    " systemctl show -p ActiveEnterTimestampMonotonic --value edgecv-app"
)
READY = "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:9108/readyz').status)\""
# A release staged beside the live one from the same wheelhouse (a second venv, as a new version gets).
OTHER_RELEASE = "/opt/edgecv/releases/0.1.0-other/venv"


def test_release_that_never_gets_ready_is_rolled_back_and_stops_the_site(ansible, converged):
    before = {h: ansible.lab.ssh(h, STATE) for h in NORTH}
    # The new release's config points the app at a Triton that is not there: it runs, /readyz stays 503.
    run = ansible.playbook(
        "app.yml", "--limit", "depot_north",
        "-e", f"inference_app_release_venv={OTHER_RELEASE}",
        "-e", "inference_app_triton_url=127.0.0.1:9",
        "-e", "inference_app_ready_timeout=40",
    )  # fmt: skip

    canary, rest = NORTH[0], NORTH[1:]
    assert run.rc != 0 and run.recap[canary]["failed"] == 1, run.output[-5000:]
    assert "rolled back to" in run.output and "Wait for the app's /readyz" in run.output, run.output[-5000:]
    # The canary runs its previous release and config again (restarted, hence a new start time), and is ready.
    now = ansible.lab.ssh(canary, STATE).splitlines()
    assert now[:3] == before[canary].splitlines()[:3]
    assert now[3] != before[canary].splitlines()[3]
    assert ansible.lab.ssh(canary, READY).strip() == "200"
    assert ansible.lab.ssh(canary, "ls /etc/edgecv /etc/systemd/system | grep -c '~$' || true").strip() == "0"
    # The rest of the site never left its release (staged beside it, not switched, not restarted).
    for host in rest:
        assert run.recap[host]["failed"] == 0
        assert ansible.lab.ssh(host, STATE) == before[host]
        assert ansible.lab.ssh(host, f"test -x {OTHER_RELEASE}/bin/edgecv && echo staged").strip() == "staged"


def test_ready_release_keeps_the_previous_and_prunes_older_ones(ansible, converged):
    host = NORTH[-1]
    live = ansible.lab.ssh(host, LIVE).strip()
    # Two older releases left by earlier rollouts (older than every other release on the device).
    ansible.lab.ssh(host, "for r in 0.0.8 0.0.9; do mkdir -p /opt/edgecv/releases/$r/venv;"
                          " touch -d '2020-01-01' /opt/edgecv/releases/$r; done")  # fmt: skip
    try:
        run = ansible.playbook(
            "app.yml", "--limit", host, "-e", f"inference_app_release_venv={OTHER_RELEASE}",
            "-e", "inference_app_keep_releases=1",
        )  # fmt: skip
        assert run.rc == 0, run.output[-5000:]
        assert ansible.lab.ssh(host, LIVE).strip() == OTHER_RELEASE
        assert ansible.lab.ssh(host, "readlink -f /opt/edgecv/previous").strip() == live
        releases = ansible.lab.ssh(host, "ls /opt/edgecv/releases").split()
        # keep 1: the live one; the previous one stays whatever its age; the older ones went.
        assert sorted(releases) == sorted({"0.1.0-other", live.split("/")[-2]}), releases
        assert ansible.lab.ssh(host, READY).strip() == "200"
    finally:
        back = ansible.playbook("app.yml", "--limit", host)
        assert back.rc == 0, back.output[-4000:]
        assert ansible.lab.ssh(host, LIVE).strip() == live
