"""Server-rendered pages: login, the queue, the review screen, throughput; plus the item media.

Opening a page may claim an item for the signed-in reviewer (a reservation that expires);
every decision and every form is a POST that carries the session's CSRF token.
"""

from __future__ import annotations

import math
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from fleet.review import queue
from fleet.review.api import item_json
from fleet.review.auth import authenticate, csrf_ok, login_retry_after, session_csrf
from fleet.review.deps import CsrfFailed, Service, current_reviewer, password_stamp, service
from fleet.review.errors import Conflict, NotFound
from fleet.review.ingest import evidence_file
from fleet.review.models import Audit, Reviewer
from fleet.review.queue import Filters
from fleet.review.stats import day_start, progress, throughput

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
def login_form(request: Request, next: str | None = None, svc: Service = Depends(service)):
    return render(svc, request, "login.html", next=_local(next), error=None)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, username: str = Form(""), password: str = Form(""), csrf_token: str = Form(""),
          next: str = Form("/queue"), svc: Service = Depends(service)):
    if not csrf_ok(request.session, csrf_token):
        raise CsrfFailed()
    now = svc.db.now()
    username = username[:160]
    with svc.db.write() as s:
        wait = login_retry_after(s, username, now, svc.settings.login_max_failures,
                                 svc.settings.login_window_minutes * 60.0)
        # Password guessing: once throttled, the password is not even checked.
        reviewer = None if wait else authenticate(s, username, password)
        action = "login_throttled" if wait else "login" if reviewer else "login_failed"
        s.add(Audit(at=now, reviewer_id=reviewer.id if reviewer else None, actor=username, action=action, detail={}))
    svc.metrics.logins.labels("throttled" if wait else "ok" if reviewer else "failed").inc()
    if wait:
        response = render(svc, request, "login.html", code=429, next=_local(next),
                          error=f"Too many failed sign-ins for this username; try again in {max(1, round(wait / 60))} min.")
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    if reviewer is None:
        return render(svc, request, "login.html", code=401, next=_local(next), error="Wrong username or password.")
    request.session.clear()  # a new session (and CSRF token) at every login
    request.session.update(uid=reviewer.id, pw=password_stamp(reviewer))
    session_csrf(request.session)
    return RedirectResponse(_local(next), status_code=303)


@router.post("/logout")
def logout(request: Request, csrf_token: str = Form(""), svc: Service = Depends(service),
           me: Reviewer = Depends(current_reviewer)):
    if not csrf_ok(request.session, csrf_token):
        raise CsrfFailed()
    with svc.db.write() as s:
        queue.release_mine(s, me, "logout", svc.db.now())
        s.add(Audit(at=svc.db.now(), reviewer_id=me.id, actor=me.username, action="logout", detail={}))
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.get("/")
def index():
    return RedirectResponse("/queue", status_code=303)


@router.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request, status: str = Query("pending", pattern="^(pending|done|all)$"),
               page: int = Query(1, ge=1, le=100000), svc: Service = Depends(service),
               me: Reviewer = Depends(current_reviewer)):
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
def review_next(request: Request, svc: Service = Depends(service), me: Reviewer = Depends(current_reviewer)):
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
def review_item(item_id: str, request: Request, svc: Service = Depends(service),
                me: Reviewer = Depends(current_reviewer)):
    now = svc.db.now()
    try:
        with svc.db.write() as s:  # only the claim under the write lock; the rest is reading
            item = queue.claim(s, item_id, me, now, svc.ttl_s)
    except Conflict as exc:
        return render(svc, request, "error.html", code=409, me=me, title="Someone else has this item",
                      message=str(exc))
    with svc.db.read() as s:
        prev_id, next_id = queue.neighbours(s, me, item)
        data = item_json(item, queue.usernames(s))
    editable = item.status == queue.PENDING or item.reviewed_by == me.id
    return render(svc, request, "review.html", me=me, item=item, data=data, editable=editable,
                  prev_url=f"/review/{prev_id}" if prev_id else None,
                  next_url=f"/review/{next_id}" if next_id else "/review",
                  filters=request.session.get("filters", {}), ttl_minutes=svc.settings.claim_minutes)


@router.get("/throughput", response_class=HTMLResponse)
def throughput_page(request: Request, hours: float | None = Query(None, gt=0, le=24 * 31),
                    svc: Service = Depends(service), me: Reviewer = Depends(current_reviewer)):
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
def item_image(item_id: str, svc: Service = Depends(service), me: Reviewer = Depends(current_reviewer)):
    return _media(svc, item_id, "image")


@router.get("/items/{item_id}/clip")
def item_clip(item_id: str, svc: Service = Depends(service), me: Reviewer = Depends(current_reviewer)):
    return _media(svc, item_id, "clip")


@router.get("/metrics")
def metrics(svc: Service = Depends(service)):
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz(svc: Service = Depends(service)) -> dict:
    with svc.db.read() as s:
        s.execute(text("SELECT 1"))
    return {"ok": True, "db": svc.db.dialect}
