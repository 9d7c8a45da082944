"""The loopback SigV4 forwarder against the SigV4-verifying proxy (botocore checks every signature)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from app.cloud.sigv4_forward import SigV4Forwarder
from fleet.local.procs import free_port
from tests.support.sigv4_proxy import SigV4Proxy

pytestmark = pytest.mark.integration
KEY, SECRET = "AKIAEDGECVFORWARD001", "stand-in-forwarder-secret"


@pytest.fixture
def aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)


def test_a_forwarded_write_is_signed_and_the_upstream_reply_comes_back(aws_env):
    bodies = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with SigV4Proxy(f"http://127.0.0.1:{upstream.server_port}", {KEY: SECRET}) as proxy:
            forwarder = SigV4Forwarder(f"{proxy.url}/api/v1/write", "eu-west-1").start()
            try:
                r = requests.post(forwarder.url, data=b"\x00snappy", timeout=10,
                                  headers={"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"})
                assert r.status_code == 204 and bodies == [b"\x00snappy"] and proxy.refused == []
                # A wrong secret: the front door's 403 goes back to the agent as it is (non-retryable there).
                proxy.secrets[KEY] = "another"
                r = requests.post(forwarder.url, data=b"x", timeout=10)
                assert r.status_code == 403 and proxy.refused == ["signature does not match"]
            finally:
                forwarder.stop()
    finally:
        upstream.shutdown()
        upstream.server_close()


def test_an_unreachable_upstream_is_a_5xx_so_the_agent_retries(aws_env):
    forwarder = SigV4Forwarder(f"http://127.0.0.1:{free_port()}/api/v1/write", "eu-west-1", timeout_s=2).start()
    try:
        assert requests.post(forwarder.url, data=b"x", timeout=10).status_code == 502
    finally:
        forwarder.stop()


def test_no_credentials_is_a_clear_error(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ValueError, match="no AWS credentials"):
        SigV4Forwarder("http://127.0.0.1:1/api/v1/write", "eu-west-1")
