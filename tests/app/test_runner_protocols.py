"""The pipeline over each transport to the session's Triton: gRPC or HTTP, with or without shared memory."""

import glob
import os
import time

import pytest
import yaml

from app.config import load_config
from app.metrics import Metrics
from app.pipeline.infer import SHM_PREFIX
from app.runner import Pipeline
from fleet.local.rtsp import sample_video
from fleet.repo import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.mark.parametrize(("protocol", "shm"), [("grpc", "on"), ("grpc", "off"), ("http", "on"), ("http", "off")])
def test_frames_flow_and_people_are_found(triton_server, tmp_path, protocol, shm):
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    cfg = {
        "site_id": "s", "device_id": "d",
        "manifest": str(REPO_ROOT / "models" / "nanodet-m" / "manifest.yaml"),
        "triton": {"url": url, "protocol": protocol, "shared_memory": shm},
        "batching": {"max_batch": 2, "max_delay_ms": 20},
        "cameras": [{"id": "a", "url": str(sample_video()), "fps": 5}, {"id": "b", "url": str(sample_video()), "fps": 5}],
    }
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(cfg))
    pipe = Pipeline(load_config(path), Metrics())
    assert pipe.infer.shared_memory == (shm == "on")
    pipe.start(ready_timeout_s=60)
    t0 = time.monotonic()
    pipe.run(duration_s=3.0)
    assert pipe.processed_per_camera["a"] >= 5 and pipe.processed_per_camera["b"] >= 5, pipe.processed_per_camera
    assert pipe.frames_dropped == 0
    assert pipe.detections_per_class.get("person", 0) >= pipe.frames_processed  # vtest: several people per frame
    assert time.monotonic() - t0 < 20
    # drain() closed the client: our shared-memory regions are unregistered and gone.
    assert not glob.glob(f"/dev/shm/{SHM_PREFIX}{os.getpid()}_*")
