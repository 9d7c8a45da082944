"""Reviewer accounts (argon2id password hashes), device tokens (SHA-256 kept), CSRF tokens.

Sessions are Starlette's signed cookies (itsdangerous): they carry the reviewer id and the
CSRF token; the signing key lives in the database (fleet.review.db.secret_key).
"""

from __future__ import annotations

import hashlib
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.review.models import Audit, DeviceToken, Reviewer

_hasher = PasswordHasher()  # argon2id, the library's default (RFC 9106 low-memory) parameters
USERNAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_PASSWORD = 8
# Verifying against this keeps the time of a login with an unknown username like a real one.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


class AuthError(ValueError):
    pass


def use_hasher(hasher: PasswordHasher) -> None:
    """Swap the argon2 parameters (tests use argon2.profiles.CHEAPEST; hashes made with other
    parameters still verify and are re-hashed at the next login)."""
    global _hasher, _DUMMY_HASH
    _hasher, _DUMMY_HASH = hasher, hasher.hash("not-a-real-password")


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"password: at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def add_reviewer(s: Session, username: str, password: str, quota: int, now: float, update: bool = False) -> Reviewer:
    if not USERNAME.match(username):
        raise AuthError(f"username {username!r}: letters, digits, '.', '_' or '-', at most 64")
    if quota < 1:
        raise AuthError("quota: at least 1 item per day")
    existing = s.scalar(select(Reviewer).where(Reviewer.username == username))
    if existing and not update:
        raise AuthError(f"username {username!r} exists (use --update to change the password or quota)")
    reviewer = existing or Reviewer(username=username, created_at=now, active=True)
    reviewer.password_hash = hash_password(password)
    reviewer.daily_quota = quota
    s.add(reviewer)
    s.flush()
    return reviewer


def authenticate(s: Session, username: str, password: str) -> Reviewer | None:
    reviewer = s.scalar(select(Reviewer).where(Reviewer.username == username, Reviewer.active.is_(True)))
    try:
        _hasher.verify(reviewer.password_hash if reviewer else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if reviewer is None:
        return None
    if _hasher.check_needs_rehash(reviewer.password_hash):
        reviewer.password_hash = _hasher.hash(password)
    return reviewer


def login_retry_after(s: Session, username: str, now: float, max_failures: int, window_s: float) -> float:
    """Seconds until `username` may try again: 0 while it has had fewer than `max_failures` failed
    sign-ins in the last `window_s`. Counted from the audit log, so every server process sharing
    the database sees the same count and a restart does not reset it."""
    # The window slides: the max_failures-th most recent failure is the one whose expiry frees a try.
    blocking = s.scalar(
        select(Audit.at)
        .where(Audit.actor == username, Audit.action == "login_failed", Audit.at >= now - window_s)
        .order_by(Audit.at.desc()).offset(max_failures - 1).limit(1)
    )
    return 0.0 if blocking is None else max(1.0, blocking + window_s - now)


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_device_token(s: Session, name: str, now: float) -> str:
    """A new token for `name` (shown once; only its hash is stored). Replaces an earlier token of that name."""
    token = "edgecv_" + secrets.token_urlsafe(32)
    row = s.scalar(select(DeviceToken).where(DeviceToken.name == name))
    if row is None:
        row = DeviceToken(name=name, created_at=now)
        s.add(row)
    row.token_sha256, row.revoked, row.created_at = _sha256(token), False, now
    s.flush()
    return token


def device_for_token(s: Session, authorization: str | None) -> DeviceToken | None:
    """The device behind an `Authorization: Bearer TOKEN` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return s.scalar(select(DeviceToken).where(DeviceToken.token_sha256 == _sha256(token.strip()),
                                              DeviceToken.revoked.is_(False)))


def session_csrf(session: dict) -> str:
    """The session's CSRF token, made on first use."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def csrf_ok(session: dict, given: str | None) -> bool:
    expected = session.get("csrf")
    return bool(expected and given and secrets.compare_digest(expected, given))
