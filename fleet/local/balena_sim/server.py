"""A local HTTP double of the balena API v7 (pinejs/OData) for the real balena-sdk to talk to.

    with BalenaDouble() as api:
        app = api.store.add_application("acme/edgecv")
        sdk = fleet.rollout.balena_client.connect(api.url, api.key)

It records every request (api.requests), can inject faults (429 with Retry-After, 500, slow or held answers)
and makes out-of-band changes as a person in the dashboard would (api.dashboard_pin).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fleet.local.balena_sim.odata import ODataError, Options, parse_key, parse_query
from fleet.local.balena_sim.store import SCHEMA, ApiError, Store
from fleet.local.procs import free_port

MAX_URL = 8192  # what the API's proxy accepts in a request line (longer: 414)
MAX_BODY = 1 << 20  # bytes of a JSON body (larger: 413)
_PATH = re.compile(r"^/v7/(?P<resource>[a-z_]+)(?:\((?P<key>[^)]*)\))?(?P<count>/\$count)?$")


@dataclass
class Recorded:
    method: str
    resource: str
    path: str  # path and raw query, as sent
    options: dict[str, str]  # decoded query options
    body: Any
    status: int
    at: float


@dataclass
class Fault:
    """Answer matching requests with `status` (after `delay` s, or once `gate` is set) `times` times.

    status None = answer normally after the delay/gate (a slow or held answer). `skip` lets the first
    matching requests through untouched. `after`: the request is carried out, only its reply is replaced
    (a reply lost on the way back).
    """

    status: int | None = 429
    retry_after: int | None = None
    delay: float = 0.0
    gate: threading.Event | None = None
    times: int = 1
    skip: int = 0
    method: str | None = None
    resource: str | None = None
    after: bool = False
    seen: int = field(default=0)

    def applies(self, method: str, resource: str) -> bool:
        if (self.method and self.method != method) or (self.resource and self.resource != resource):
            return False
        self.seen += 1
        if self.seen <= self.skip or self.times <= 0:
            return False
        self.times -= 1
        return True


class BalenaDouble:
    def __init__(self, key: str = "test-api-key", port: int | None = None, first_id: int = 1000):
        self.key = key
        self.store = Store(first_id)
        self.lock = threading.RLock()
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.rejects: dict[tuple[int, int], str] = {}  # (device id, release id) -> update_status
        self.port = port or free_port()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> BalenaDouble:
        double = self

        class Handler(_Handler):
            api = double

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="balena-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> BalenaDouble:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- test controls

    def inject(self, **kwargs: Any) -> Fault:
        fault = Fault(**kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def dashboard_pin(self, device_uuid: str, release_id: int | None) -> None:
        """A person re-pins a device in the dashboard (release_id None = track the fleet again)."""
        with self.lock:
            dev = self.device(device_uuid)
            self.store.update("device", [dev], {"is_pinned_on__release": release_id}, who="dashboard")

    def dashboard_pin_fleet(self, app_id: int, release_id: int) -> None:
        with self.lock:
            app = self.store.tables["application"][app_id]
            self.store.update("application", [app], {"should_be_running__release": release_id,
                                                     "should_track_latest_release": False}, who="dashboard")

    def set_online(self, device_uuid: str, online: bool, vpn: bool | None = None) -> None:
        """The device's API heartbeat (what lets it update); `vpn` (is_online) follows unless given:
        a device behind a firewall that blocks the VPN still polls the API and updates."""
        with self.lock:
            dev = self.device(device_uuid)
            dev["api_heartbeat_state"] = "online" if online else "offline"
            dev["is_online"] = online if vpn is None else vpn

    def reject_release(self, device_uuid: str, release_id: int, status: str = "rejected") -> None:
        """The supervisor refuses `release_id` on this device (e.g. its container requirements are not met)."""
        with self.lock:
            self.rejects[(self.device(device_uuid)["id"], release_id)] = status

    def devices_apply_targets(self) -> None:
        """Devices with a live heartbeat download and start what they should be running (the supervisor's job);
        a release the device rejects leaves it on what it ran, with update_status saying why."""
        with self.lock:
            for dev in self.store.tables["device"].values():
                if dev["api_heartbeat_state"] != "online":
                    continue
                target = self.store.value("device", dev, "should_be_running__release")
                refused = self.rejects.get((dev["id"], target))
                if refused:
                    dev["update_status"] = refused
                elif target != dev["is_running__release"]:
                    dev["is_running__release"] = target
                    dev["update_status"] = "done"

    def device(self, uuid: str) -> dict:
        return next(d for d in self.store.tables["device"].values() if d["uuid"] == uuid)

    def count(self, method: str | None = None, resource: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests
                       if (method is None or r.method == method) and (resource is None or r.resource == resource))

    def reset_log(self) -> None:
        with self.lock:
            self.requests.clear()

    # ---------------------------------------------------------------- one request

    def handle(self, method: str, raw_path: str, headers: Any, body: Any, size: int = 0,
               faults: bool = True) -> tuple[int, dict[str, str], Any]:
        path, _, raw_query = raw_path.partition("?")
        m = _PATH.match(path)
        resource = m.group("resource") if m else path
        fault = None
        if faults:
            with self.lock:
                fault = next((f for f in self.faults if f.applies(method, resource)), None)
        if fault:
            if fault.gate is not None:
                fault.gate.wait(60)
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status is not None and fault.after:  # carried out; the reply is lost
                self.handle(method, raw_path, headers, body, faults=False)
            if fault.status is not None:
                extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                return self._record(method, resource, raw_path, {}, body, fault.status, extra,
                                    "Too Many Requests" if fault.status == 429 else "injected fault")
        if len(raw_path) > MAX_URL:
            return self._record(method, resource, raw_path, {}, None, 414, {}, "URI Too Long")
        if size > MAX_BODY:
            return self._record(method, resource, raw_path, {}, None, 413, {}, "Payload Too Large")
        if headers.get("Authorization") != f"Bearer {self.key}":
            return self._record(method, resource, raw_path, {}, body, 401, {}, "Unauthorized")
        if not m or resource not in SCHEMA:
            return self._record(method, resource, raw_path, {}, body, 404, {}, f"no resource {path}")
        try:
            opts = parse_query(raw_query)
            key = parse_key(m.group("key")) if m.group("key") is not None else None
            with self.lock:
                status, payload = self._serve(method, resource, opts, key, bool(m.group("count")), body)
        except ODataError as exc:
            status, payload = 400, str(exc)
        except ApiError as exc:
            status, payload = exc.status, exc.message
        options = dict(p.partition("=")[::2] for p in raw_query.split("&") if p)
        return self._record(method, resource, raw_path, options, body, status, {}, payload)

    def _serve(self, method: str, resource: str, opts: Options, key: dict | None, count: bool,
               body: Any) -> tuple[int, Any]:
        store = self.store
        if method == "GET":
            rows = store.query(resource, opts, key)
            if count:
                return 200, {"d": len(rows)}
            return 200, {"d": [store.render(resource, r, opts) for r in rows]}
        if method == "POST":
            if not isinstance(body, dict):
                raise ApiError(400, "POST needs a JSON object body")
            created = store.create(resource, body)
            return 201, store.render(resource, created, Options())
        if method in ("PATCH", "DELETE"):
            if key is None and opts.filter is None:
                raise ApiError(400, f"{method} on a whole collection needs an id or a $filter")
            rows = store.query(resource, Options(filter=opts.filter), key)
            if method == "PATCH":
                if not isinstance(body, dict) or not body:
                    raise ApiError(400, "PATCH needs a JSON object body")
                store.update(resource, rows, body)
            else:
                store.remove(resource, rows)
            return 200, None
        raise ApiError(405, f"method {method} not allowed")

    def _record(self, method: str, resource: str, raw_path: str, options: dict, body: Any, status: int,
                headers: dict, payload: Any) -> tuple[int, dict, Any]:
        from urllib.parse import unquote

        with self.lock:
            self.requests.append(Recorded(method, resource, raw_path, {k: unquote(v) for k, v in options.items()},
                                          body, status, time.monotonic()))
        return status, headers, payload


class _Handler(BaseHTTPRequestHandler):
    api: BalenaDouble
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API behind its proxy
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        status, headers, payload = self.api.handle(self.command, self.path, self.headers, body, len(raw))
        if payload is None:
            data, ctype = b"", "text/plain"
        elif isinstance(payload, str):
            data, ctype = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client died (a killed controller): the write stays done
            self.close_connection = True

    do_GET = do_POST = do_PATCH = do_DELETE = _any

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the requests are recorded instead
        pass
