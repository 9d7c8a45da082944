"""The ASGI app: `create_app(settings)` migrates the database, then serves pages, API, static files and /metrics."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet.review import api, pages
from fleet.review.db import Database, secret_key, set_setting
from fleet.review.deps import CsrfFailed, NotAuthenticated, Service
from fleet.review.errors import Conflict, FieldError, NotFound
from fleet.review.metrics import ReviewMetrics
from fleet.review.settings import ReviewSettings

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
    db = db or Database(settings.db_url)
    db.migrate()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with db.write() as s:  # `edgecv review export` reads the palette the server used
        set_setting(s, "classes", json.dumps(settings.classes))

    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["ts"] = _fmt_time
    metrics = ReviewMetrics(db)
    app = FastAPI(title="edgecv review", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.review = Service(db=db, settings=settings, metrics=metrics, templates=templates)
    app.add_middleware(SessionMiddleware, secret_key=secret_key(db), session_cookie="edgecv_review",
                       max_age=int(settings.session_hours * 3600), same_site="lax",
                       https_only=settings.secure_cookies)
    app.add_middleware(ServerTiming, metrics=metrics)
    _install_errors(app, metrics)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app
