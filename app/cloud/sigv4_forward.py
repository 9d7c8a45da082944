"""A loopback forwarder that signs the Prometheus agent's remote writes with SigV4 (service `aps`).

Why: Debian bookworm's prometheus 2.42.0+ds accepts a `sigv4:` block but sends its remote writes
unsigned (tests/roles/telemetry/test_remote_write.py records it), and Amazon Managed Prometheus refuses
those. The agent writes, unsigned, to this forwarder on 127.0.0.1; it signs each request with botocore
(credentials from the AWS profile, i.e. IAM Roles Anywhere's credential_process, renewed as they expire)
and passes it on; the upstream's reply (status and body) goes back to the agent unchanged, so the
agent's retry and back-off logic still sees what AMP said.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)
MAX_BODY = 32 << 20  # AMP takes at most ~1 MB per request; the agent never sends close to this
FORWARDED = ("Content-Type", "Content-Encoding", "X-Prometheus-Remote-Write-Version", "User-Agent")


class SigV4Forwarder:
    """`SigV4Forwarder(upstream_url, region).start()`; point the agent's remote_write at `.url`."""

    def __init__(self, upstream: str, region: str, profile: str | None = None, host: str = "127.0.0.1",
                 port: int = 0, service: str = "aps", timeout_s: float = 30.0):
        import botocore.session

        if urlsplit(upstream).scheme not in ("http", "https"):
            raise ValueError(f"sigv4 forwarder: upstream {upstream!r} is not an http(s) URL")
        session = botocore.session.Session(profile=profile)
        self.credentials = session.get_credentials()
        if self.credentials is None:
            raise ValueError(f"sigv4 forwarder: no AWS credentials (profile {profile or '(default)'})")
        self.upstream, self.region, self.service, self.timeout_s = upstream, region, service, timeout_s
        self.http = requests.Session()
        forwarder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self.send_error(413)
                    return
                status, body = forwarder.forward(self.rfile.read(length), {
                    k: self.headers[k] for k in FORWARDED if k in self.headers})
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_port}"
        self._thread: threading.Thread | None = None

    def forward(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="POST", url=self.upstream, data=body, headers=dict(headers))
        # Frozen per request: a credential_process session is refreshed by botocore when it nears expiry.
        SigV4Auth(self.credentials.get_frozen_credentials(), self.service, self.region).add_auth(request)
        try:
            reply = self.http.post(self.upstream, data=body, headers=dict(request.headers.items()),
                                   timeout=self.timeout_s)
        except requests.RequestException as exc:
            log.warning("remote write to %s failed: %s", self.upstream, exc)
            return 502, str(exc).encode()  # 5xx: the agent keeps the samples and retries
        return reply.status_code, reply.content

    def start(self) -> SigV4Forwarder:
        self._thread = threading.Thread(target=self.server.serve_forever, name="sigv4-forward", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
