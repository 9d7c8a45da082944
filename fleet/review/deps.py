"""What every request handler needs: the service's state, the signed-in reviewer, the CSRF check."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates

from fleet.review.auth import csrf_ok
from fleet.review.db import Database
from fleet.review.metrics import ReviewMetrics
from fleet.review.models import Reviewer
from fleet.review.settings import ReviewSettings


@dataclass
class Service:
    db: Database
    settings: ReviewSettings
    metrics: ReviewMetrics
    templates: Jinja2Templates

    @property
    def ttl_s(self) -> float:
        return self.settings.claim_minutes * 60.0

    @property
    def palette(self) -> list[str]:
        return self.settings.classes


class NotAuthenticated(Exception):
    """No valid session: pages redirect to the login form, the API answers 401."""


class CsrfFailed(Exception):
    pass


def password_stamp(reviewer: Reviewer) -> str:
    """Kept in the session: a password change signs out every other session of that reviewer."""
    return hashlib.sha256(reviewer.password_hash.encode()).hexdigest()[:16]


def service(request: Request) -> Service:
    return request.app.state.review


def current_reviewer(request: Request, svc: Service = Depends(service)) -> Reviewer:
    uid = request.session.get("uid")
    if uid is None:
        raise NotAuthenticated()
    with svc.db.read() as s:
        reviewer = s.get(Reviewer, uid)
    if reviewer is None or not reviewer.active or request.session.get("pw") != password_stamp(reviewer):
        request.session.clear()  # account gone, disabled, or password changed since: sign in again
        raise NotAuthenticated()
    return reviewer


def require_csrf(request: Request) -> None:
    """For JSON actions: the session's token in the X-CSRF-Token header."""
    if not csrf_ok(request.session, request.headers.get("x-csrf-token")):
        raise CsrfFailed()
