"""Server-rendered pages: login, the queue, the review screen, throughput; plus the item media.

Opening a page may claim an item for the signed-in reviewer (a reservation that expires);
every decision and every form is a POST that carries the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import math
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from fleet.review import queue
from fleet.review.api import item_out
from fleet.review.auth import (
    address_retry_after,
    csrf_ok,
    end_session,
    find_reviewer,
    new_session,
    record_failure,
    rehash_if_needed,
    session_csrf,
    username_delay,
    verify_password,
)
from fleet.review.deps import CsrfFailed, ReviewerDep, Service, ServiceDep, current_reviewer, device_of
from fleet.review.errors import Conflict, NotFound
from fleet.review.ingest import evidence_file
from fleet.review.models import Audit, Reviewer
from fleet.review.queue import Filters
from fleet.review.stats import day_start, progress, throughput
from fleet.review.thumbs import thumbnail

router = APIRouter()
PAGE_SIZE = 50


def render(svc: Service, request: Request, name: str, code: int = 200, me: Reviewer | None = None, **ctx):
    base = {"me": me, "csrf": session_csrf(request.session), "palette": svc.palette}
    if me is not None and "progress" not in ctx:
        with svc.db.read() as s:
            base["progress"] = progress(s, me, svc.db.now())
    return svc.templates.TemplateResponse(request, name, {**base, **ctx}, status_code=code)


def _local(next_url: str | None) -> str:
    """Only same-site paths: never redirect a fresh login to another host."""
    return next_url if next_url and next_url.startswith("/") and not next_url.startswith("//") else "/queue"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, svc: ServiceDep, next: str | None = None):
    return render(svc, request, "login.html", next=_local(next), error=None)


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, svc: ServiceDep, username: Annotated[str, Form()] = "",
                password: Annotated[str, Form()] = "", csrf_token: Annotated[str, Form()] = "",
                next: Annotated[str, Form()] = "/queue"):
    """Sign in. The database work runs in short transactions on a worker thread; the argon2 check runs
    between them, holding no transaction and no write lock, so a flood of sign-ins cannot stall reviewers."""
    if not csrf_ok(request.session, csrf_token):
        raise CsrfFailed()
    st, now, address, username = svc.settings, svc.db.now(), _client_address(request), username[:160]
    window = st.login_window_minutes * 60.0

    def check() -> tuple[float, float, tuple[int, str] | None]:
        with svc.db.read() as s:
            wait = address_retry_after(s, address, now, st.login_address_max_failures, window)
            delay = username_delay(s, username, now, st.login_max_failures, window, st.login_max_delay_s)
            return wait, delay, find_reviewer(s, username)

    wait, delay, found = await run_in_threadpool(check)
    if wait:  # this address has guessed too often: refused before any password is checked, and without a
        # database write (a flood of refused tries must not queue on SQLite's one writer): the metric counts them
        svc.metrics.logins.labels("throttled").inc()
        response = render(svc, request, "login.html", code=429, next=_local(next),
                          error=f"Too many failed sign-ins from your address; try again in {max(1, round(wait / 60))} min.")
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    if delay:  # a username under attack: every try waits, the real user still gets in
        await asyncio.sleep(delay)
    ok = await run_in_threadpool(verify_password, found[1] if found else None, password)
    if not ok:
        def failed() -> None:
            with svc.db.write() as s:
                record_failure(s, username, address, now)
                s.add(Audit(at=now, actor=username, action="login_failed", detail={"address": address}))
        await run_in_threadpool(failed)
        svc.metrics.logins.labels("failed").inc()
        return render(svc, request, "login.html", code=401, next=_local(next), error="Wrong username or password.")
    rehashed = await run_in_threadpool(rehash_if_needed, found[1], password)

    def signed_in() -> str:
        with svc.db.write() as s:
            reviewer = s.get(Reviewer, found[0])
            if rehashed and reviewer.password_hash == found[1]:
                reviewer.password_hash = rehashed
            s.add(Audit(at=now, reviewer_id=found[0], actor=username, action="login", detail={}))
            return new_session(s, found[0], now, st.session_hours)
    sid = await run_in_threadpool(signed_in)
    svc.metrics.logins.labels("ok").inc()
    request.session.clear()  # a new session (and CSRF token) at every login
    request.session["sid"] = sid
    session_csrf(request.session)
    return RedirectResponse(_local(next), status_code=303)


@router.post("/logout")
def logout(request: Request, svc: ServiceDep, me: ReviewerDep, csrf_token: Annotated[str, Form()] = ""):
    if not csrf_ok(request.session, csrf_token):
        raise CsrfFailed()
    with svc.db.write() as s:
        queue.release_mine(s, me, "logout", svc.db.now())
        end_session(s, request.session.get("sid"))  # the cookie, even if kept, opens nothing any more
        s.add(Audit(at=svc.db.now(), reviewer_id=me.id, actor=me.username, action="logout", detail={}))
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.get("/")
def index():
    return RedirectResponse("/queue", status_code=303)


@router.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request, svc: ServiceDep, me: ReviewerDep,
               status: Annotated[str, Query(pattern="^(pending|done|all)$")] = "pending",
               page: Annotated[int, Query(ge=1, le=100000)] = 1):
    filters = Filters.from_mapping(request.query_params)
    with svc.db.read() as s:
        rows, total = queue.list_items(s, filters, status, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        menus = queue.facets(s, status)
        names = queue.usernames(s)
    params = filters.as_params()
    return render(svc, request, "queue.html", me=me, rows=rows, total=total, page=page, page_size=PAGE_SIZE,
                  status=status, filters=params, menus=menus, names=names, now=svc.db.now(),
                  review_url="/review?" + urlencode({**params, "filters": "set"}),
                  page_url=lambda p: "/queue?" + urlencode({**params, "status": status, "page": p}))


@router.get("/review", response_class=HTMLResponse)
def review_next(request: Request, svc: ServiceDep, me: ReviewerDep):
    """Claim the next item (under the session's filters) and show it; or say the queue is empty."""
    if "filters" in request.query_params:  # the queue page's "review these" link sets the filters
        request.session["filters"] = Filters.from_mapping(request.query_params).as_params()
    filters = Filters.from_mapping(request.session.get("filters", {}))
    with svc.db.write() as s:
        item = queue.claim_next(s, svc.db.is_postgres, me, filters, svc.db.now(), svc.ttl_s)
    if item is not None:
        return RedirectResponse(f"/review/{item.id}", status_code=303)
    with svc.db.read() as s:
        prev_id = queue.neighbours(s, me, None)[0]
    return render(svc, request, "empty.html", me=me, filters=filters.as_params(),
                  prev_url=f"/review/{prev_id}" if prev_id else None)


@router.get("/review/{item_id}", response_class=HTMLResponse)
def review_item(item_id: str, request: Request, svc: ServiceDep, me: ReviewerDep):
    now = svc.db.now()
    try:
        with svc.db.write() as s:  # only the claim under the write lock; the rest is reading
            item = queue.claim(s, item_id, me, now, svc.ttl_s)
    except Conflict as exc:
        return render(svc, request, "error.html", code=409, me=me, title="Someone else has this item",
                      message=str(exc))
    with svc.db.read() as s:
        prev_id, next_id = queue.neighbours(s, me, item)
        data = item_out(item, queue.usernames(s)).model_dump()
    editable = item.status == queue.PENDING or item.reviewed_by == me.id
    return render(svc, request, "review.html", me=me, item=item, data=data, editable=editable,
                  prev_url=f"/review/{prev_id}" if prev_id else None,
                  next_url=f"/review/{next_id}" if next_id else "/review",
                  filters=request.session.get("filters", {}), ttl_minutes=svc.settings.claim_minutes)


@router.get("/throughput", response_class=HTMLResponse)
def throughput_page(request: Request, svc: ServiceDep, me: ReviewerDep,
                    hours: Annotated[float | None, Query(gt=0, le=24 * 31)] = None):
    now = svc.db.now()
    since = now - hours * 3600 if hours else day_start(now)
    with svc.db.read() as s:
        rows = throughput(s, since, now)
    return render(svc, request, "throughput.html", me=me, rows=rows, since=since, now=now, hours=hours)


def _media(svc: Service, item_id: str, kind: str) -> Response:
    with svc.db.read() as s:
        item = queue.get_item(s, item_id)
    if kind == "image":
        if item.image_file:
            return FileResponse(svc.settings.data_dir / "images" / item.image_file, media_type="image/jpeg")
        path, url, media = item.image_path, item.image_url, "image/jpeg"
    else:
        path, url, media = item.clip_path, item.clip_url, "video/mp4"
    if path:
        return FileResponse(evidence_file(svc.settings, path, kind), media_type=media)
    if url:
        return RedirectResponse(url, status_code=307)
    raise NotFound(f"item {item_id!r} has no {kind}")


@router.get("/items/{item_id}/image")
def item_image(item_id: str, svc: ServiceDep, me: ReviewerDep):
    return _media(svc, item_id, "image")


@router.get("/items/{item_id}/clip")
def item_clip(item_id: str, svc: ServiceDep, me: ReviewerDep):
    return _media(svc, item_id, "clip")


@router.get("/items/{item_id}/thumb")
def item_thumb(item_id: str, svc: ServiceDep, me: ReviewerDep):
    """A small JPEG for the queue (made once, kept under data_dir/thumbs)."""
    with svc.db.read() as s:
        item = queue.get_item(s, item_id)
    path = thumbnail(svc.settings, item)
    if path is None:
        raise NotFound(f"item {item_id!r} has no local image to make a thumbnail from")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/metrics")
def metrics(request: Request, svc: ServiceDep):
    """Prometheus metrics: for a signed-in reviewer or a Bearer device token (Prometheus' `authorization`)."""
    if device_of(svc, request.headers.get("authorization")) is None:
        current_reviewer(request, svc)  # raises NotAuthenticated: 401 / the login page
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz(svc: ServiceDep) -> dict:
    with svc.db.read() as s:
        s.execute(text("SELECT 1"))
    return {"ok": True, "db": svc.db.dialect}
