"""The review service's configuration, validated once at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_CLASSES = ["person", "car", "truck", "bicycle", "forklift"]


class ReviewSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db_url: str = Field(description="SQLAlchemy URL: sqlite:///path/review.db or postgresql+psycopg://...")
    data_dir: Path = Field(description="where ingested images (base64 uploads) are stored")
    evidence_root: Path | None = Field(None, description="local evidence store; image_path/clip_path are relative to it")
    classes: list[str] = Field(default_factory=lambda: list(DEFAULT_CLASSES),
                               description="the class palette: keys 1-9 pick these, corrections must use them")
    claim_minutes: float = Field(10.0, gt=0, description="an untouched claim is released after this long")
    secure_cookies: bool = Field(False, description="mark the session cookie Secure (behind HTTPS)")
    session_hours: float = Field(12.0, gt=0)
    max_image_bytes: int = Field(10 << 20, gt=0)
    max_body_bytes: int = Field(16 << 20, gt=0, description="POST /api/items bodies over this are refused (413)")
    max_form_bytes: int = Field(1 << 20, gt=0, description="every other request body (forms, corrections)")
    login_max_failures: int = Field(5, ge=1, description="failed sign-ins of one username before each further "
                                                         "attempt is delayed (doubling, up to login_max_delay_s)")
    login_max_delay_s: float = Field(8.0, ge=0)
    login_address_max_failures: int = Field(20, ge=1, description="failed sign-ins from one client address "
                                                                  "before it is refused (429) until they age out")
    login_window_minutes: float = Field(15.0, gt=0, description="how far back failed sign-ins count")
    image_url_allow: list[str] = Field(
        default_factory=list,
        description="evidence stores that image_url may point into and export may fetch from: URL prefixes "
                    "such as https://evidence.example.com/ or https://s3.eu-west-1.amazonaws.com/BUCKET/; "
                    "empty: image_url is refused")

    @field_validator("image_url_allow")
    @classmethod
    def _allow(cls, v: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        for prefix in v:
            parts = urlsplit(prefix)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
                raise ValueError(f"{prefix!r}: an http(s) URL prefix with a host, e.g. https://store.example/bucket/")
        return [p if urlsplit(p).path else p + "/" for p in v]

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str]) -> list[str]:
        v = [c.strip() for c in v if c.strip()]
        if not v:
            raise ValueError("at least one class is needed")
        if len(set(v)) != len(v):
            raise ValueError("class names must be unique")
        return v

    @staticmethod
    def sqlite_url(data_dir: Path) -> str:
        return f"sqlite:///{Path(data_dir).resolve() / 'review.db'}"
