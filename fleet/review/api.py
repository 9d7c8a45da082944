"""The JSON API: ingestion (device token), reviewer actions (session + CSRF header), rates for the drift monitor."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select

from fleet.review import actions, queue
from fleet.review.deps import (
    CsrfChecked,
    DeviceDep,
    NotAuthenticated,
    ReviewerDep,
    Service,
    ServiceDep,
    current_reviewer,
    device_of,
)
from fleet.review.ingest import ingest
from fleet.review.models import Audit, Item, Reviewer
from fleet.review.queue import Filters
from fleet.review.schemas import (
    AuditOut,
    ClaimOut,
    Correction,
    CorrectionRateOut,
    DecisionOut,
    IngestAnswer,
    IngestItem,
    ItemOut,
    ProgressOut,
    ThroughputOut,
)
from fleet.review.stats import correction_rate, day_start, progress, throughput

router = APIRouter(prefix="/api")
Acting = [CsrfChecked]


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


def item_out(item: Item, names: dict[int, str]) -> ItemOut:
    return ItemOut(
        id=item.id, reason=item.reason, site=item.site, device=item.device, camera=item.camera, model=item.model,
        classes=item.classes, width=item.width, height=item.height, image=f"/items/{item.id}/image",
        thumb=f"/items/{item.id}/thumb",
        clip=f"/items/{item.id}/clip" if item.clip_path or item.clip_url else None, event_id=item.event_id,
        predictions=item.predictions, captured_at=item.captured_at, created_at=item.created_at, status=item.status,
        decision=item.decision, labels=item.labels,
        claimed_by=names.get(item.claimed_by) if item.claimed_by else None, claimed_at=item.claimed_at,
        reviewed_by=names.get(item.reviewed_by) if item.reviewed_by else None, reviewed_at=item.reviewed_at,
        review_seconds=item.review_seconds)


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, streamed and counted: refused (413) as soon as it passes `limit`, never held whole beyond it."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


INGEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/IngestItem"}}}}}


@router.post("/items", status_code=201, response_model=IngestAnswer, openapi_extra=INGEST_BODY,
             responses={200: {"model": IngestAnswer, "description": "the same item was already queued"},
                        401: {"description": "no valid device token (the body is not read)"},
                        403: {"description": "the token belongs to another device"},
                        409: {"description": "the id exists with different content"},
                        413: {"description": "body over max_body_bytes"}})
async def post_item(request: Request, response: Response, svc: ServiceDep, device: DeviceDep) -> IngestAnswer:
    """Ingest one flagged item (body: IngestItem). The token is checked before a byte of the body is read.
    Sending the same item again changes nothing (200, created: false)."""
    raw = await read_capped(request, svc.settings.max_body_bytes)
    try:
        body = IngestItem.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    item, created = await run_in_threadpool(ingest, svc.db, svc.settings, body, device)
    if created:
        svc.metrics.ingested.labels(item.reason).inc()
    else:
        svc.metrics.duplicates.inc()
        response.status_code = 200
    return IngestAnswer(id=item.id, created=created, status=item.status)


@router.get("/correction-rate", response_model=CorrectionRateOut)
def get_correction_rate(request: Request, svc: ServiceDep, authorization: Annotated[str | None, Header()] = None,
                        since: Annotated[float | None, Query(ge=0, description="Unix time; default: now - hours")] = None,
                        hours: Annotated[float, Query(gt=0, le=24 * 366)] = 24.0,
                        model: str | None = None, site: str | None = None, device: str | None = None,
                        camera: str | None = None) -> dict:
    """Corrections per reviewed item over a window; poll with since=<the last answer's until> to count each once."""
    try:
        current_reviewer(request, svc)
    except NotAuthenticated:
        if device_of(svc, authorization) is None:
            raise HTTPException(401, "a valid device token or a session is required",
                                headers={"WWW-Authenticate": "Bearer"}) from None
    now = svc.db.now()
    with svc.db.read() as s:
        return correction_rate(s, since if since is not None else now - hours * 3600, now, model, site, device, camera)


@router.get("/items/{item_id}", response_model=ItemOut)
def get_item(item_id: str, svc: ServiceDep, me: ReviewerDep) -> ItemOut:
    with svc.db.read() as s:
        return item_out(queue.get_item(s, item_id), queue.usernames(s))


@router.get("/items/{item_id}/audit", response_model=list[AuditOut])
def get_audit(item_id: str, svc: ServiceDep, me: ReviewerDep) -> list[Audit]:
    with svc.db.read() as s:
        queue.get_item(s, item_id)
        return list(s.scalars(select(Audit).where(Audit.item_id == item_id).order_by(Audit.id)).all())


def _with_names(svc: Service, item: Item) -> ItemOut:
    with svc.db.read() as s:
        return item_out(item, queue.usernames(s))


@router.post("/claim-next", dependencies=Acting, response_model=ClaimOut)
def post_claim_next(request: Request, svc: ServiceDep, me: ReviewerDep) -> ClaimOut:
    filters = Filters.from_mapping(request.query_params)
    with svc.db.write() as s:
        item = queue.claim_next(s, svc.db.is_postgres, me, filters, svc.db.now(), svc.ttl_s)
    return ClaimOut(item=_with_names(svc, item) if item else None)


@router.post("/items/{item_id}/claim", dependencies=Acting, response_model=ClaimOut)
def post_claim(item_id: str, svc: ServiceDep, me: ReviewerDep) -> ClaimOut:
    with svc.db.write() as s:
        item = queue.claim(s, item_id, me, svc.db.now(), svc.ttl_s)
    return ClaimOut(item=_with_names(svc, item))


@router.post("/items/{item_id}/skip", dependencies=Acting, response_model=ClaimOut)
def post_skip(item_id: str, svc: ServiceDep, me: ReviewerDep) -> ClaimOut:
    with svc.db.write() as s:
        item = queue.skip(s, item_id, me, svc.db.now())
    return ClaimOut(item=_with_names(svc, item))


def _progress(s, me: Reviewer, now: float) -> ProgressOut:
    p = progress(s, me, now)
    return ProgressOut(done=p.done, quota=p.quota, percent=p.percent)


def _decide(svc: Service, me: Reviewer, item_id: str, action: str, correction: Correction | None) -> DecisionOut:
    now = svc.db.now()
    with svc.db.write() as s:  # the write transaction does only the decision (SQLite: one writer at a time)
        item, amend = actions.decide(s, item_id, me, action, correction, svc.palette, now, svc.ttl_s)
    with svc.db.read() as s:
        _, next_id = queue.neighbours(s, me, item) if amend else (None, None)
        body = DecisionOut(item=item_out(item, queue.usernames(s)), progress=_progress(s, me, now),
                           next=f"/review/{next_id}" if next_id else "/review")
    svc.metrics.decisions.labels(item.decision).inc()
    if item.review_seconds is not None and not amend:
        svc.metrics.item_seconds.labels(item.decision).observe(item.review_seconds)
    return body


@router.post("/items/{item_id}/approve", dependencies=Acting, response_model=DecisionOut)
def post_approve(item_id: str, svc: ServiceDep, me: ReviewerDep) -> DecisionOut:
    return _decide(svc, me, item_id, "approve", None)


@router.post("/items/{item_id}/reject", dependencies=Acting, response_model=DecisionOut)
def post_reject(item_id: str, svc: ServiceDep, me: ReviewerDep) -> DecisionOut:
    return _decide(svc, me, item_id, "reject", None)


@router.post("/items/{item_id}/correct", dependencies=Acting, response_model=DecisionOut)
def post_correct(item_id: str, body: Correction, svc: ServiceDep, me: ReviewerDep) -> DecisionOut:
    return _decide(svc, me, item_id, "correct", body)


@router.post("/undo", dependencies=Acting, response_model=DecisionOut)
def post_undo(svc: ServiceDep, me: ReviewerDep) -> DecisionOut:
    now = svc.db.now()
    with svc.db.write() as s:
        item = actions.undo(s, me, now)
    with svc.db.read() as s:
        body = DecisionOut(item=item_out(item, queue.usernames(s)), progress=_progress(s, me, now),
                           next=f"/review/{item.id}")
    svc.metrics.decisions.labels("undo").inc()
    return body


@router.get("/progress", response_model=ProgressOut)
def get_progress(svc: ServiceDep, me: ReviewerDep) -> ProgressOut:
    with svc.db.read() as s:
        return _progress(s, me, svc.db.now())


@router.get("/throughput", response_model=ThroughputOut)
def get_throughput(svc: ServiceDep, me: ReviewerDep,
                   hours: Annotated[float | None, Query(gt=0, le=24 * 31, description="default: today (UTC)")] = None,
                   ) -> ThroughputOut:
    now = svc.db.now()
    since = now - hours * 3600 if hours else day_start(now)
    with svc.db.read() as s:
        rows = throughput(s, since, now)
    return ThroughputOut(since=since, until=now, reviewers=[t.__dict__ for t in rows])
