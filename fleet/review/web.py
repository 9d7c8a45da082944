"""The ASGI app: `create_app(settings)` migrates the database, then serves pages, API, static files and /metrics.

Around every request: a body-size cap (streamed, counted), security headers (CSP, no framing, no
sniffing, no caching of pages), and a server-side timing header. /metrics and the OpenAPI document
need a signed-in reviewer (or, for /metrics, a device token).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet.review import api, pages
from fleet.review.api import BodyTooLarge
from fleet.review.db import Database, set_setting
from fleet.review.deps import CsrfFailed, NotAuthenticated, ReviewerDep, Service
from fleet.review.errors import Conflict, FieldError, Forbidden, NotFound
from fleet.review.fetch import origin
from fleet.review.metrics import ReviewMetrics
from fleet.review.schemas import IngestItem
from fleet.review.settings import ReviewSettings
from fleet.review.storage import private_dir, session_key

HERE = Path(__file__).parent


class ServerTiming:
    """Times every request inside the server: a `Server-Timing: app;dur=MS` header and a histogram per route."""

    def __init__(self, app: ASGIApp, metrics: ReviewMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def send_timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = time.perf_counter() - start
                route = getattr(scope.get("route"), "path", "other")
                self.metrics.request_seconds.labels(scope["method"], route).observe(elapsed)
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"server-timing", f"app;dur={elapsed * 1000:.2f}".encode())]
            await send(message)

        await self.app(scope, receive, send_timed)


INGEST_PATH = "/api/items"


class BodyLimit:
    """Caps request bodies while they stream in: a declared Content-Length over the cap is a 413 before
    anything is read; a body that passes the cap while arriving is cut off with a 413. POST /api/items has
    its own, larger cap, checked by the endpoint after the device token (401 comes first there)."""

    def __init__(self, app: ASGIApp, settings: ReviewSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ingest = scope["path"] == INGEST_PATH
        limit = self.settings.max_body_bytes if ingest else self.settings.max_form_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if not ingest and declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(send, limit)
            return
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking)
        except BodyTooLarge:
            if started:
                raise
            await _too_large(send, limit)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"request body over {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """CSP (own origin, plus the allowed evidence stores for images and clips), no framing, no MIME
    sniffing, no referrer to other sites, and no caching of anything but static files and thumbnails."""

    def __init__(self, app: ASGIApp, settings: ReviewSettings):
        self.app = app
        stores = " ".join(sorted({origin(u) for u in settings.image_url_allow}))
        media = f"'self' {stores}".strip()
        csp = (f"default-src 'self'; img-src {media} data:; media-src {media}; script-src 'self'; "
               "style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
        self.headers = [(b"content-security-policy", csp.encode()), (b"x-frame-options", b"DENY"),
                        (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                        (b"cross-origin-opener-policy", b"same-origin")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    cacheable = scope["path"].startswith("/static/")
                    headers.append((b"cache-control", b"private, max-age=300" if cacheable else b"no-store"))
                message["headers"] = headers + self.headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get("accept", "")


def _error(request: Request, status: int, title: str, message: str, detail=None):
    if _wants_json(request):
        return JSONResponse({"detail": detail if detail is not None else message}, status_code=status)
    svc: Service = request.app.state.review
    return pages.render(svc, request, "error.html", code=status, title=title, message=message)


def _install_errors(app: FastAPI, metrics: ReviewMetrics) -> None:
    @app.exception_handler(NotAuthenticated)
    async def _unauthenticated(request: Request, exc: NotAuthenticated):
        if _wants_json(request):
            return JSONResponse({"detail": "sign in first"}, status_code=401)
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.exception_handler(CsrfFailed)
    async def _csrf(request: Request, exc: CsrfFailed):
        return _error(request, 403, "Forbidden", "CSRF token missing or wrong: reload the page and try again")

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        return _error(request, 403, "Forbidden", str(exc))

    @app.exception_handler(BodyTooLarge)
    async def _too_big(request: Request, exc: BodyTooLarge):
        return JSONResponse({"detail": str(exc)}, status_code=413, headers={"Connection": "close"})

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return _error(request, 404, "Not found", str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict):
        return _error(request, 409, "Conflict", str(exc))

    @app.exception_handler(FieldError)
    async def _field(request: Request, exc: FieldError):
        metrics.rejected_input.labels(request.url.path.split("/")[2] if _wants_json(request) else "page").inc()
        loc = ["body", *exc.field.replace("]", "").replace("[", ".").split(".")]
        detail = [{"loc": [int(p) if p.isdigit() else p for p in loc], "msg": exc.message, "type": "value_error"}]
        return _error(request, 422, "Bad input", str(exc), detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        metrics.rejected_input.labels(request.url.path.split("/")[2] if _wants_json(request) else "page").inc()
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return _error(request, 422, "Bad input", text, errors)


def _fmt_time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def create_app(settings: ReviewSettings, db: Database | None = None) -> FastAPI:
    private_dir(settings.data_dir)  # before the database: a default SQLite file lives in it
    db = db or Database(settings.db_url)
    db.migrate()
    with db.write() as s:  # `edgecv review export` reads the palette the server used
        set_setting(s, "classes", json.dumps(settings.classes))

    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["ts"] = _fmt_time
    metrics = ReviewMetrics(db)
    app = FastAPI(title="edgecv review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = Service(db=db, settings=settings, metrics=metrics, templates=templates)
    # The cookie is signed with a key outside the database; it carries only a session id (see auth.py).
    app.add_middleware(SessionMiddleware, secret_key=session_key(settings.data_dir), session_cookie="edgecv_review",
                       max_age=int(settings.session_hours * 3600), same_site="lax",
                       https_only=settings.secure_cookies)
    app.add_middleware(ServerTiming, metrics=metrics)
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(SecurityHeaders, settings=settings)
    _install_errors(app, metrics)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(me: ReviewerDep) -> JSONResponse:
        return JSONResponse(_openapi(app))

    return app


def _openapi(app: FastAPI) -> dict:
    """The generated document plus the ingest body's schema (the endpoint streams its body itself)."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version="1", routes=app.routes)
        schema = IngestItem.model_json_schema(ref_template="#/components/schemas/{model}")
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        components.update(schema.pop("$defs", {}))
        components["IngestItem"] = schema
        app.openapi_schema = doc
    return app.openapi_schema
