"""Fixtures: three throwaway hosts booted once per session, converged by the real site playbook."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.ansible.hosts import Lab, missing_prerequisite
from tests.ansible.support import (
    DEVICES,
    MODEL_FILE,
    REPO,
    Ansible,
    JournalReceiver,
    build_nvidia_repo,
    build_wheelhouse,
    put_standins,
    write_inventory,
)

MANIFEST = REPO / "models/nanodet-m/manifest.yaml"


def _video(path: Path) -> Path:
    """A few seconds of a moving box: the cameras' stand-in (the app loops video files)."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for i in range(30):
        frame = np.full((240, 320, 3), 90, np.uint8)
        cv2.rectangle(frame, (10 + 8 * i, 60), (70 + 8 * i, 180), (40, 160, 220), -1)
        out.write(frame)
    out.release()
    return path


def _site_cameras(site_vars: dict) -> dict:
    """The site's cameras as in inventory/example (zones, rules), each reading the local video at 1 fps (the machine running the tests is shared)."""
    return {cid: {**cam, "url": "/srv/edgecv-test/camera.avi", "fps": 1} for cid, cam in site_vars.items()}


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    why = missing_prerequisite()
    if why:
        pytest.skip(why)
    with Lab([h for hosts in DEVICES.values() for h in hosts]) as lab:
        yield lab


@pytest.fixture(scope="session")
def journal_receiver(lab: Lab, tmp_path_factory) -> JournalReceiver:
    """Where the devices ship their journal (systemd-journal-remote on the bridge, as a site's central host)."""
    receiver = JournalReceiver(lab, tmp_path_factory.mktemp("journal-remote"))
    receiver.start()
    return receiver


@pytest.fixture(scope="session")
def ansible(lab: Lab, journal_receiver: JournalReceiver, tmp_path_factory) -> Ansible:
    import yaml

    work = tmp_path_factory.mktemp("ansible")
    nvidia_url = lab.serve(build_nvidia_repo(work / "nvidia")) + "/jetson"
    put_standins(lab, _video(work / "camera.avi"), nvidia_url)
    wheels_url = lab.serve(build_wheelhouse(work / "wheelhouse"))
    # The artifact store: the repository's model files, at the paths of their file:// URIs.
    store = work / "artifacts"
    (store / "models/nanodet-m").mkdir(parents=True)
    shutil.copy(REPO / "models/nanodet-m/nanodet-m.onnx", store / "models/nanodet-m/nanodet-m.onnx")
    store_url = lab.serve(store)
    inv_dir = REPO / "inventory/example/group_vars"
    cams = {
        site: _site_cameras(yaml.safe_load((inv_dir / site / "main.yml").read_text())["site_cameras"])
        for site in DEVICES
    }
    host_site = {h: site for site, hosts in DEVICES.items() for h in hosts}
    inventory = write_inventory(
        lab,
        work,
        {
            "edgecv_wheelhouse_url": wheels_url + "/",
            "triton_artifact_store_url": store_url,
            "edgecv_model_manifest": str(MANIFEST),
            "inference_app_mqtt_host": "",  # no broker on the test bridge: events stay on the device (counted)
            "telemetry_remote_write_url": f"http://{lab.state.gateway}:9/api/v1/write",
            # Jetson facts from the stand-ins: NVIDIA's repository, the device tree, a container's reboot.
            "jetpack_apt_repo_url": nvidia_url,
            "jetpack_apt_key_url": f"{nvidia_url}/jetson-ota-public.asc",
            "jetson_facts_model_file": MODEL_FILE,
            # A container shares the kernel's boot_id; its PID 1 start time tells a new boot.
            "jetpack_reboot_boot_time_command": "cut -d' ' -f22 /proc/1/stat",
            # Journals go to the receiver on the bridge (plain HTTP on the lab's private bridge only).
            "telemetry_journal_upload_url": journal_receiver.url,
            "telemetry_journal_upload_insecure_http": True,
            "telemetry_journal_upload_retry_sec": 2,
        },
    )
    # Per-site cameras go into each device's host_vars (they beat the example's group_vars).
    for host, site in host_site.items():
        path = inventory / "host_vars" / f"{host}.yml"
        data = yaml.safe_load(path.read_text())
        data["site_cameras"] = cams[site]
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return Ansible(lab, inventory, work)


@pytest.fixture(scope="session")
def converged(ansible: Ansible):
    """The first converge of every site, then a second run; both kept for the tests to inspect."""
    first = ansible.playbook("site.yml")
    assert first.rc == 0, first.output[-6000:] + ansible.diagnose()
    second = ansible.playbook("site.yml")
    print(f"\nconverge {first.seconds:.0f}s, re-run {second.seconds:.0f}s")
    return first, second
