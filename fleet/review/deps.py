"""What every request handler needs, as `Annotated` dependency aliases (the FastAPI full-stack template's
idiom): the service's state (`ServiceDep`), the signed-in reviewer (`ReviewerDep`), the device behind a
Bearer token (`DeviceDep`, checked before any body is read), and the CSRF check (`CsrfChecked`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from fastapi.templating import Jinja2Templates

from fleet.review.auth import csrf_ok, device_for_token, session_reviewer
from fleet.review.db import Database
from fleet.review.metrics import ReviewMetrics
from fleet.review.models import DeviceToken, Reviewer
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


def service(request: Request) -> Service:
    return request.app.state.review


ServiceDep = Annotated[Service, Depends(service)]


def current_reviewer(request: Request, svc: ServiceDep) -> Reviewer:
    """The reviewer of the session's server-side row: gone after logout, a password change or disabling."""
    with svc.db.read() as s:
        reviewer = session_reviewer(s, request.session.get("sid"), svc.db.now())
    if reviewer is None:
        if "sid" in request.session:
            request.session.clear()
        raise NotAuthenticated()
    return reviewer


ReviewerDep = Annotated[Reviewer, Depends(current_reviewer)]


def device_of(svc: Service, authorization: str | None) -> DeviceToken | None:
    with svc.db.read() as s:
        return device_for_token(s, authorization)


def current_device(svc: ServiceDep, authorization: Annotated[str | None, Header()] = None) -> DeviceToken:
    token = device_of(svc, authorization)
    if token is None:
        raise HTTPException(401, "a valid device token is required (Authorization: Bearer TOKEN)",
                            headers={"WWW-Authenticate": "Bearer"})
    return token


DeviceDep = Annotated[DeviceToken, Depends(current_device)]


def require_csrf(request: Request) -> None:
    """For JSON actions: the session's token in the X-CSRF-Token header."""
    if not csrf_ok(request.session, request.headers.get("x-csrf-token")):
        raise CsrfFailed()


CsrfChecked = Depends(require_csrf)
