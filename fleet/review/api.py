"""The JSON API: ingestion (device token), reviewer actions (session + CSRF header), rates for the drift monitor."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from sqlalchemy import select

from fleet.review import actions, queue
from fleet.review.auth import device_for_token
from fleet.review.deps import NotAuthenticated, Service, current_reviewer, require_csrf, service
from fleet.review.ingest import ingest
from fleet.review.models import Audit, Item, Reviewer
from fleet.review.queue import Filters
from fleet.review.schemas import Correction, IngestItem
from fleet.review.stats import correction_rate, day_start, progress, throughput

router = APIRouter(prefix="/api")
Acting = [Depends(require_csrf)]


def item_json(item: Item, names: dict[int, str]) -> dict:
    return {
        "id": item.id, "reason": item.reason, "site": item.site, "device": item.device, "camera": item.camera,
        "model": item.model, "classes": item.classes, "width": item.width, "height": item.height,
        "image": f"/items/{item.id}/image", "clip": f"/items/{item.id}/clip" if item.clip_path or item.clip_url else None,
        "event_id": item.event_id, "predictions": item.predictions, "captured_at": item.captured_at,
        "created_at": item.created_at, "status": item.status, "decision": item.decision, "labels": item.labels,
        "claimed_by": names.get(item.claimed_by) if item.claimed_by else None, "claimed_at": item.claimed_at,
        "reviewed_by": names.get(item.reviewed_by) if item.reviewed_by else None,
        "reviewed_at": item.reviewed_at, "review_seconds": item.review_seconds,
    }


def _device(svc: Service, authorization: str | None) -> str:
    with svc.db.read() as s:
        token = device_for_token(s, authorization)
    if token is None:
        raise HTTPException(401, "a valid device token is required (Authorization: Bearer TOKEN)",
                            headers={"WWW-Authenticate": "Bearer"})
    return token.name


@router.post("/items", status_code=201)
def post_item(body: IngestItem, response: Response, svc: Service = Depends(service),
              authorization: str | None = Header(None)) -> dict:
    """Ingest one flagged item. Sending the same id again changes nothing (200, created: false)."""
    device = _device(svc, authorization)
    item, created = ingest(svc.db, svc.settings, body, actor=f"device:{device}")
    if created:
        svc.metrics.ingested.labels(item.reason).inc()
    else:
        svc.metrics.duplicates.inc()
        response.status_code = 200
    return {"id": item.id, "created": created, "status": item.status}


@router.get("/correction-rate")
def get_correction_rate(request: Request, svc: Service = Depends(service), authorization: str | None = Header(None),
                        since: float | None = Query(None, ge=0, description="Unix time; default: now - hours"),
                        hours: float = Query(24.0, gt=0, le=24 * 366),
                        model: str | None = None, site: str | None = None, device: str | None = None,
                        camera: str | None = None) -> dict:
    """Corrections per reviewed item over a window; poll with since=<the last answer's until> to count each once."""
    try:
        current_reviewer(request, svc)
    except NotAuthenticated:
        _device(svc, authorization)
    now = svc.db.now()
    with svc.db.read() as s:
        return correction_rate(s, since if since is not None else now - hours * 3600, now, model, site, device, camera)


@router.get("/items/{item_id}")
def get_item(item_id: str, svc: Service = Depends(service), me: Reviewer = Depends(current_reviewer)) -> dict:
    with svc.db.read() as s:
        return item_json(queue.get_item(s, item_id), queue.usernames(s))


@router.get("/items/{item_id}/audit")
def get_audit(item_id: str, svc: Service = Depends(service), me: Reviewer = Depends(current_reviewer)) -> list[dict]:
    with svc.db.read() as s:
        queue.get_item(s, item_id)
        rows = s.scalars(select(Audit).where(Audit.item_id == item_id).order_by(Audit.id)).all()
        return [{"id": a.id, "at": a.at, "actor": a.actor, "action": a.action, "detail": a.detail,
                 "undone": a.undone} for a in rows]


@router.post("/claim-next", dependencies=Acting)
def post_claim_next(request: Request, svc: Service = Depends(service),
                    me: Reviewer = Depends(current_reviewer)) -> dict:
    filters = Filters.from_mapping(request.query_params)
    with svc.db.write() as s:
        item = queue.claim_next(s, svc.db.is_postgres, me, filters, svc.db.now(), svc.ttl_s)
    return {"item": _with_names(svc, item) if item else None}


def _with_names(svc: Service, item: Item) -> dict:
    with svc.db.read() as s:
        return item_json(item, queue.usernames(s))


@router.post("/items/{item_id}/claim", dependencies=Acting)
def post_claim(item_id: str, svc: Service = Depends(service), me: Reviewer = Depends(current_reviewer)) -> dict:
    with svc.db.write() as s:
        item = queue.claim(s, item_id, me, svc.db.now(), svc.ttl_s)
    return {"item": _with_names(svc, item)}


@router.post("/items/{item_id}/skip", dependencies=Acting)
def post_skip(item_id: str, svc: Service = Depends(service), me: Reviewer = Depends(current_reviewer)) -> dict:
    with svc.db.write() as s:
        item = queue.skip(s, item_id, me, svc.db.now())
    return {"item": _with_names(svc, item)}


def _decide(svc: Service, me: Reviewer, item_id: str, action: str, correction: Correction | None) -> dict:
    now = svc.db.now()
    with svc.db.write() as s:  # the write transaction does only the decision (SQLite: one writer at a time)
        item, amend = actions.decide(s, item_id, me, action, correction, svc.palette, now, svc.ttl_s)
    with svc.db.read() as s:
        _, next_id = queue.neighbours(s, me, item) if amend else (None, None)
        body = {"item": item_json(item, queue.usernames(s)), "progress": _progress(s, me, now),
                "next": f"/review/{next_id}" if next_id else "/review"}
    svc.metrics.decisions.labels(me.username, item.decision).inc()
    if item.review_seconds is not None and not amend:
        svc.metrics.item_seconds.labels(item.decision).observe(item.review_seconds)
    return body


def _progress(s, me: Reviewer, now: float) -> dict:
    p = progress(s, me, now)
    return {"done": p.done, "quota": p.quota, "percent": p.percent}


@router.post("/items/{item_id}/approve", dependencies=Acting)
def post_approve(item_id: str, svc: Service = Depends(service), me: Reviewer = Depends(current_reviewer)) -> dict:
    return _decide(svc, me, item_id, "approve", None)


@router.post("/items/{item_id}/reject", dependencies=Acting)
def post_reject(item_id: str, svc: Service = Depends(service), me: Reviewer = Depends(current_reviewer)) -> dict:
    return _decide(svc, me, item_id, "reject", None)


@router.post("/items/{item_id}/correct", dependencies=Acting)
def post_correct(item_id: str, body: Correction, svc: Service = Depends(service),
                 me: Reviewer = Depends(current_reviewer)) -> dict:
    return _decide(svc, me, item_id, "correct", body)


@router.post("/undo", dependencies=Acting)
def post_undo(svc: Service = Depends(service), me: Reviewer = Depends(current_reviewer)) -> dict:
    now = svc.db.now()
    with svc.db.write() as s:
        item = actions.undo(s, me, now)
    with svc.db.read() as s:
        body = {"item": item_json(item, queue.usernames(s)), "progress": _progress(s, me, now),
                "next": f"/review/{item.id}"}
    svc.metrics.decisions.labels(me.username, "undo").inc()
    return body


@router.get("/progress")
def get_progress(svc: Service = Depends(service), me: Reviewer = Depends(current_reviewer)) -> dict:
    with svc.db.read() as s:
        return _progress(s, me, svc.db.now())


@router.get("/throughput")
def get_throughput(svc: Service = Depends(service), me: Reviewer = Depends(current_reviewer),
                   hours: float | None = Query(None, gt=0, le=24 * 31, description="default: today (UTC)")) -> dict:
    now = svc.db.now()
    since = now - hours * 3600 if hours else day_start(now)
    with svc.db.read() as s:
        return {"since": since, "until": now, "reviewers": [t.__dict__ for t in throughput(s, since, now)]}

