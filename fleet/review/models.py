"""The review queue's tables. Times are Unix seconds (float): portable across SQLite and PostgreSQL.

An item is `pending` until a reviewer decides it, then `done` with a decision (approved, rejected,
corrected) and its final labels. A pending item may be claimed by one reviewer at a time. Every
decision, claim release, undo and login lands in the append-only `audit` table.

Any change here needs a migration in migrations/versions/ (a test compares the two).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

REASONS = ("alert", "drift", "low_confidence", "random")
# Lower is reviewed first: alerts need an answer soonest, random samples can wait.
PRIORITY = {"alert": 0, "drift": 1, "low_confidence": 2, "random": 3}
DECISIONS = ("approved", "rejected", "corrected")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class AppSetting(Base):
    """Small key/value state shared by every server process (the class palette). Never secrets: whoever
    reads the database file must not be able to forge a session."""

    __tablename__ = "app_settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Reviewer(Base):
    __tablename__ = "reviewers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    daily_quota: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float)


class DeviceToken(Base):
    """Devices (and the evidence uploader) post items with a Bearer token; only its SHA-256 is kept."""

    __tablename__ = "device_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # A token files items only as the device it is named after, unless made for an uploader that
    # relays many devices' evidence (edgecv review add-token NAME --any-device).
    any_device: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class WebSession(Base):
    """A signed-in reviewer's session, kept server-side: the cookie carries only a random id whose SHA-256
    is the key, so logout, disabling the reviewer or changing the password ends it everywhere."""

    __tablename__ = "web_sessions"
    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("reviewers.id", ondelete="CASCADE"))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_web_sessions_reviewer", "reviewer_id"),)


class LoginFailure(Base):
    """Failed sign-ins by username and by client address: the per-address limit and the per-user delay
    count them (shared by every server process; a restart does not reset them)."""

    __tablename__ = "login_failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    username: Mapped[str] = mapped_column(String(160))
    address: Mapped[str] = mapped_column(String(64))
    __table_args__ = (
        Index("ix_login_failures_username", "username", "at"),
        Index("ix_login_failures_address", "address", "at"),
    )


class Item(Base):
    __tablename__ = "items"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    reason: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    site: Mapped[str] = mapped_column(String(128))
    device: Mapped[str] = mapped_column(String(128))
    camera: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(160))
    classes: Mapped[list[Any]] = mapped_column(JSON)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    image_file: Mapped[str | None] = mapped_column(String(255))  # under settings.data_dir
    image_path: Mapped[str | None] = mapped_column(String(512))  # under settings.evidence_root
    image_url: Mapped[str | None] = mapped_column(String(1024))
    clip_path: Mapped[str | None] = mapped_column(String(512))
    clip_url: Mapped[str | None] = mapped_column(String(1024))
    event_id: Mapped[str | None] = mapped_column(String(128))
    predictions: Mapped[list[Any]] = mapped_column(JSON)  # [{box: [x1,y1,x2,y2], class, score}]
    captured_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(8), default="pending")
    claimed_by: Mapped[int | None] = mapped_column(ForeignKey("reviewers.id"))
    claimed_at: Mapped[float | None] = mapped_column(Float)
    decision: Mapped[str | None] = mapped_column(String(10))
    labels: Mapped[list[Any] | None] = mapped_column(JSON)  # final boxes after review
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("reviewers.id"))
    reviewed_at: Mapped[float | None] = mapped_column(Float)
    review_seconds: Mapped[float | None] = mapped_column(Float)  # claim -> decision
    # What the sender sent (canonical JSON of the validated body): the same id again with other content is a 409.
    payload_sha256: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        # The claim query and the queue page: pending, best priority, oldest first (id breaks ties), read in
        # index order so LIMIT stops at once (claimed rows are skipped: at most one per reviewer).
        Index("ix_items_queue", "status", "priority", "created_at", "id"),
        Index("ix_items_recent", "status", "created_at", "id"),  # the queue page's "done" and "all" views
        # Who holds what: few rows are claimed at any time, so a partial index stays tiny and exact.
        Index("ix_items_claimed_by", "claimed_by", sqlite_where=text("claimed_by IS NOT NULL"),
              postgresql_where=text("claimed_by IS NOT NULL")),
        Index("ix_items_claimed_at", "status", "claimed_at"),
        Index("ix_items_reviewer_day", "reviewed_by", "reviewed_at"),
        Index("ix_items_reviewed_at", "reviewed_at"),
        # Covers the queue page's filter menus (counts per reason, site, camera, model) and the reason filter.
        Index("ix_items_facets", "status", "reason", "site", "camera", "model"),
        Index("ix_items_site", "site"),
        Index("ix_items_camera", "camera"),
        Index("ix_items_model", "model"),
    )


class ItemClass(Base):
    """The classes an item shows, one row each, so the queue can filter by class with an index."""

    __tablename__ = "item_classes"
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    class_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    __table_args__ = (Index("ix_item_classes_class", "class_name", "item_id"),)


class Audit(Base):
    """Append-only: who did what to which item, with the state before and after."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("reviewers.id"))
    actor: Mapped[str] = mapped_column(String(160))  # username, "device:NAME" or "system"
    item_id: Mapped[str | None] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    undone: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_audit_reviewer_action", "reviewer_id", "action", "at"),
        Index("ix_audit_item", "item_id", "id"),
        Index("ix_audit_actor_action", "actor", "action", "at"),  # failed sign-ins per username
    )
