"""The app's HTTP endpoint on the metrics port: /metrics (Prometheus), /healthz, /readyz.

/healthz: liveness. 200 while the pipeline loop keeps turning and every background thread lives; the body
         says "ok" or "degraded" (Triton down, a camera down with its reason, a disk full) with the details.
         503 when the loop is stuck or a thread died (a restart would help): "stuck" or "dead_thread".
/readyz: readiness. 200 when the Triton model is ready and at least one camera delivers frames, else 503.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


class StatusServer:
    """Serves `registry` and the status returned by `status()`: a dict with at least
    {"loop_alive": bool, "triton_ready": bool, "cameras": {id: bool}}."""

    def __init__(self, registry, status: Callable[[], dict], host: str = "0.0.0.0", port: int = 0):
        self.registry, self.status = registry, status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._json(*outer.health())
                elif path == "/readyz":
                    self._json(*outer.readiness())
                else:
                    self._json(404, {"error": f"no such path {path}; try /metrics, /healthz, /readyz"})

            def _json(self, code: int, body: dict) -> None:
                self._send(code, (json.dumps(body) + "\n").encode(), "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes every few seconds: keep the log quiet
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def health(self) -> tuple[int, dict]:
        s = self.status()
        down = sorted(c for c, up in s["cameras"].items() if not up)
        dead, disk_full = s.get("dead_threads", []), s.get("disk_full", [])
        degraded = not s["triton_ready"] or bool(down) or bool(disk_full)
        status = ("stuck" if not s["loop_alive"] else "dead_thread" if dead else "degraded" if degraded else "ok")
        body = {
            "status": status,
            "triton_ready": s["triton_ready"],
            "cameras_down": down,
            "camera_errors": {c: e for c, e in s.get("camera_errors", {}).items() if c in down},
            "disk_full": disk_full,
            "dead_threads": dead,
        }
        return (200 if status not in ("stuck", "dead_thread") else 503), body

    def readiness(self) -> tuple[int, dict]:
        s = self.status()
        up = sorted(c for c, ok in s["cameras"].items() if ok)
        ready = s["triton_ready"] and bool(up)
        reasons = ([] if s["triton_ready"] else ["triton model not ready"]) + ([] if up else ["no camera up"])
        return (200 if ready else 503), {"ready": ready, "cameras_up": up, "reasons": reasons}

    def start(self) -> StatusServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="status-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self.httpd.server_close()
