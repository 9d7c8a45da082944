"""Reviewer accounts (argon2id password hashes), server-side sessions, sign-in throttles, device tokens, CSRF.

A session is a row in `web_sessions` keyed by the SHA-256 of a random id; the cookie (signed with a key
kept outside the database, see storage.py) carries only that id and the CSRF token. Logout deletes the
row; disabling a reviewer or changing the password deletes all of theirs.

Sign-in guessing is slowed without letting anyone lock a real user out: a client address with too many
recent failures is refused (429) before any password is checked, while a username with many failures
only makes each further attempt wait (a delay that doubles, capped). Password hashes are checked outside
any database transaction and at most HASH_SLOTS at a time, so a login flood cannot stall reviewers' writes.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fleet.review.models import DeviceToken, LoginFailure, Reviewer, WebSession

_hasher = PasswordHasher()  # argon2id, the library's default (RFC 9106 low-memory) parameters
USERNAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_PASSWORD = 8
HASH_SLOTS = 2  # argon2 is CPU- and memory-heavy: a flood queues here, not on every core
_hash_slots = threading.BoundedSemaphore(HASH_SLOTS)
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


def add_reviewer(s: Session, username: str, password: str | None, quota: int | None, now: float,
                 update: bool = False) -> Reviewer:
    """Create a reviewer, or with `update` change only the fields given (None keeps the stored value)."""
    if not USERNAME.match(username):
        raise AuthError(f"username {username!r}: letters, digits, '.', '_' or '-', at most 64")
    if quota is not None and quota < 1:
        raise AuthError("quota: at least 1 item per day")
    existing = s.scalar(select(Reviewer).where(Reviewer.username == username))
    if existing and not update:
        raise AuthError(f"username {username!r} exists (use --update to change the password or quota)")
    if existing is None and update:
        raise AuthError(f"username {username!r}: no such reviewer to update")
    if existing is None and password is None:
        raise AuthError("password: a new reviewer needs one")
    reviewer = existing or Reviewer(username=username, created_at=now, active=True, daily_quota=200)
    if password is not None:
        reviewer.password_hash = hash_password(password)
        if existing is not None:
            end_sessions(s, existing.id)  # a new password signs out every session
    if quota is not None:
        reviewer.daily_quota = quota
    s.add(reviewer)
    s.flush()
    return reviewer


def set_active(s: Session, username: str, active: bool) -> Reviewer:
    reviewer = s.scalar(select(Reviewer).where(Reviewer.username == username))
    if reviewer is None:
        raise AuthError(f"username {username!r}: no such reviewer")
    reviewer.active = active
    if not active:
        end_sessions(s, reviewer.id)
    return reviewer


def find_reviewer(s: Session, username: str) -> tuple[int, str] | None:
    """(id, password hash) of an active reviewer, read so the hash can be checked after the transaction."""
    row = s.execute(select(Reviewer.id, Reviewer.password_hash)
                    .where(Reviewer.username == username, Reviewer.active.is_(True))).first()
    return (row.id, row.password_hash) if row else None


def verify_password(password_hash: str | None, password: str) -> bool:
    """Check a password against a hash (or a dummy one, so unknown usernames take as long). No database."""
    with _hash_slots:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False


def rehash_if_needed(password_hash: str, password: str) -> str | None:
    if not _hasher.check_needs_rehash(password_hash):
        return None
    with _hash_slots:
        return _hasher.hash(password)


# --- sign-in throttles ----------------------------------------------------------------------------------

def address_retry_after(s: Session, address: str, now: float, max_failures: int, window_s: float) -> float:
    """Seconds until `address` may try again: 0 while it has had fewer than `max_failures` failed sign-ins
    in the last `window_s` (the window slides: the max_failures-th most recent failure frees the next try)."""
    blocking = s.scalar(select(LoginFailure.at)
                        .where(LoginFailure.address == address, LoginFailure.at >= now - window_s)
                        .order_by(LoginFailure.at.desc()).offset(max_failures - 1).limit(1))
    return 0.0 if blocking is None else max(1.0, blocking + window_s - now)


def username_delay(s: Session, username: str, now: float, free_failures: int, window_s: float,
                   max_delay_s: float) -> float:
    """Seconds a sign-in of `username` waits: none for its first `free_failures` recent failures, then
    0.5 s doubling per further failure, capped. A delay, never a lock: the real user still gets in."""
    n = s.scalar(select(func.count()).select_from(LoginFailure)
                 .where(LoginFailure.username == username, LoginFailure.at >= now - window_s)) or 0
    return 0.0 if n < free_failures else min(max_delay_s, 0.5 * 2 ** min(n - free_failures, 16))


def record_failure(s: Session, username: str, address: str, now: float) -> None:
    s.add(LoginFailure(at=now, username=username[:160], address=address[:64]))


# --- sessions -------------------------------------------------------------------------------------------

def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session(s: Session, reviewer_id: int, now: float, hours: float) -> str:
    """A session for the reviewer; returns the id for the cookie (only its hash is stored)."""
    sid = secrets.token_urlsafe(32)
    s.add(WebSession(id_sha256=_sha256(sid), reviewer_id=reviewer_id, created_at=now, expires_at=now + hours * 3600))
    s.execute(delete(WebSession).where(WebSession.reviewer_id == reviewer_id, WebSession.expires_at < now))
    return sid


def session_reviewer(s: Session, sid: str | None, now: float) -> Reviewer | None:
    """The active reviewer whose unexpired session has this id, or None (one indexed query)."""
    if not sid:
        return None
    return s.scalar(select(Reviewer).join(WebSession, WebSession.reviewer_id == Reviewer.id)
                    .where(WebSession.id_sha256 == _sha256(sid), WebSession.expires_at > now,
                           Reviewer.active.is_(True)))


def end_session(s: Session, sid: str | None) -> None:
    if sid:
        s.execute(delete(WebSession).where(WebSession.id_sha256 == _sha256(sid)))


def end_sessions(s: Session, reviewer_id: int) -> None:
    s.execute(delete(WebSession).where(WebSession.reviewer_id == reviewer_id))


# --- device tokens --------------------------------------------------------------------------------------

def add_device_token(s: Session, name: str, now: float, any_device: bool = False) -> str:
    """A new token for `name` (shown once; only its hash is stored). Replaces an earlier token of that name.
    It files items only for the device `name`, unless `any_device` (an uploader relaying many devices)."""
    token = "edgecv_" + secrets.token_urlsafe(32)
    row = s.scalar(select(DeviceToken).where(DeviceToken.name == name))
    if row is None:
        row = DeviceToken(name=name, created_at=now)
        s.add(row)
    row.token_sha256, row.revoked, row.created_at, row.any_device = _sha256(token), False, now, any_device
    s.flush()
    return token


def revoke_device_token(s: Session, name: str) -> None:
    row = s.scalar(select(DeviceToken).where(DeviceToken.name == name))
    if row is None:
        raise AuthError(f"token {name!r}: no such token")
    row.revoked = True


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


def authenticate(s: Session, username: str, password: str) -> Reviewer | None:
    """The active reviewer with this username and password, or None (for tools and tests; the web sign-in
    checks the hash outside its transactions, see pages.login)."""
    found = find_reviewer(s, username)
    return s.get(Reviewer, found[0]) if found and verify_password(found[1], password) else None
