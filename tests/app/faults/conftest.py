"""Fixtures of the fault-injection suite: a broker that keeps sessions across restarts, S3 for evidence."""

from __future__ import annotations

import os
import signal

import boto3
import pytest
from moto.server import ThreadedMotoServer

from fleet.local.mosquitto import mosquitto
from fleet.local.procs import free_port

BUCKET = "edgecv-faults"


@pytest.fixture
def broker(tmp_path):
    # persistence: the test's subscriber (persistent session) gets what was queued while the broker restarted.
    b = mosquitto(workdir=tmp_path, persistence=True)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def s3(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client, url
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def healthy_triton(triton_server):
    """Every fault test starts on a Triton that answers on gRPC, what the app uses (a test before, run
    against an app without deadlines, may have left it wedged)."""
    import tritonclient.grpc as grpcclient

    def answers() -> bool:
        try:
            client = grpcclient.InferenceServerClient(triton_server.grpc_url)
            try:
                return client.is_model_ready("nanodet-m", client_timeout=3)
            finally:
                client.close()
        except Exception:
            return False

    if triton_server.proc.poll() is not None or not triton_server.ready() or not answers():
        triton_server.stop()
        triton_server.start()
    return triton_server


@pytest.fixture
def frozen_triton(triton_server):
    """freeze()/thaw() the session's Triton (SIGSTOP/SIGCONT to its process group); thawed at teardown."""

    class Freezer:
        def freeze(self) -> None:
            os.killpg(triton_server.proc.pid, signal.SIGSTOP)

        def thaw(self) -> None:
            os.killpg(triton_server.proc.pid, signal.SIGCONT)

    f = Freezer()
    try:
        yield f
    finally:
        f.thaw()
