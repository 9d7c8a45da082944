"""A SigV4-verifying reverse proxy: what Amazon Managed Prometheus does at its front door, for tests.

Each request's `Authorization: AWS4-HMAC-SHA256 ...` header is recomputed with botocore from the
stand-in credentials this proxy knows (access key -> secret) over exactly the headers the client signed;
a missing, unknown, stale (over 5 minutes) or wrong signature is refused with 403 before the body is
forwarded. Good requests go to the upstream (a real Prometheus) unchanged, and the reply comes back.
"""

from __future__ import annotations

import re
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})")
MAX_BODY = 16 << 20
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def verify(method: str, url: str, headers: dict[str, str], body: bytes, secrets: dict[str, str],
           service: str = "aps", now: datetime | None = None) -> str | None:
    """None when the request carries a valid SigV4 signature from a known key; else why not."""
    m = _AUTH.fullmatch(headers.get("authorization", ""))
    if not m:
        return "missing or malformed SigV4 Authorization header"
    key, _day, region, signed_service, signed_headers, signature = m.groups()
    if key not in secrets:
        return f"unknown access key {key}"
    if signed_service != service:
        return f"signed for service {signed_service}, not {service}"
    stamp = headers.get("x-amz-date", "")
    try:
        when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return "missing X-Amz-Date"
    if abs((now or datetime.now(timezone.utc)) - when) > timedelta(minutes=5):
        return "request time too skewed"
    names = signed_headers.split(";")
    if "host" not in names:
        return "host is not signed"
    request = AWSRequest(method=method, url=url, data=body,
                         headers={n: headers[n] for n in names if n in headers})
    request.context["timestamp"] = stamp
    auth = SigV4Auth(Credentials(key, secrets[key], headers.get("x-amz-security-token")), service, region)
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    return None if expected == signature else "signature does not match"


class SigV4Proxy:
    """`with SigV4Proxy(upstream_url, {"AKID": "secret"}) as proxy:` then point clients at proxy.url."""

    def __init__(self, upstream: str, secrets: dict[str, str], service: str = "aps"):
        self.upstream, self.secrets, self.service = upstream.rstrip("/"), secrets, service
        self.accepted = 0
        self.refused: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                length = int(headers.get("content-length") or 0)
                if length > MAX_BODY:
                    self.send_error(413)
                    return
                body = self.rfile.read(length) if length else b""
                url = f"http://{headers.get('host', '')}{self.path}"
                why = verify(self.command, url, headers, body, proxy.secrets, proxy.service)
                if why is not None:
                    proxy.refused.append(why)
                    self.send_response(403)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"message":"' + why.encode() + b'"}')
                    return
                proxy.accepted += 1
                forward = {k: v for k, v in self.headers.items()
                           if k.lower() not in HOP_BY_HOP and k.lower() != "authorization"}
                reply = requests.request(self.command, proxy.upstream + self.path, data=body, headers=forward,
                                         timeout=30)
                self.send_response(reply.status_code)
                for k, v in reply.headers.items():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SigV4Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
