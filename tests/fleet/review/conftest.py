"""Review service fixtures: every test runs against SQLite and against a real PostgreSQL server.

The PostgreSQL cluster (Debian's server, on 127.0.0.1 and a free port) starts once per session,
is migrated once, and emptied before each test.
"""

from __future__ import annotations

import base64
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from argon2 import PasswordHasher, profiles
from sqlalchemy import create_engine, text

from fleet.local import postgres as localpg
from fleet.review import auth
from fleet.review.auth import add_device_token, add_reviewer
from fleet.review.db import Database
from fleet.review.models import Base
from fleet.review.settings import ReviewSettings

warnings.filterwarnings("ignore", message=".*httpx.*", category=DeprecationWarning)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from fleet.review.web import create_app  # noqa: E402

PASSWORD = "correct horse battery"
auth.use_hasher(PasswordHasher.from_parameters(profiles.CHEAPEST))  # same code path, cheap parameters
CLASSES = ["person", "car", "truck"]


class Clock:
    """A clock the test moves by hand (claim expiry, seconds per item)."""

    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(scope="session")
def pg_server():
    if not localpg.available():
        pytest.skip(f"PostgreSQL server binaries not in {localpg.PG_BIN} (make apt installs postgresql)")
    with localpg.LocalPostgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def pg_url(pg_server):
    """One migrated database for the session; each test empties it first (faster than a database per test)."""
    db = Database(pg_server.url)
    db.migrate()
    db.dispose()
    return pg_server.url


def _empty(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as c:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        c.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return ReviewSettings.sqlite_url(tmp_path / "db")
    url = request.getfixturevalue("pg_url")
    _empty(url)
    return url


def jpeg(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def item(item_id: str, reason: str = "low_confidence", **over) -> dict:
    body = {
        "id": item_id, "reason": reason, "site": "site-a", "device": "jetson-01", "camera": "cam-1",
        "model": "detector@1.2.0", "image": base64.b64encode(jpeg()).decode(),
        "boxes": [{"box": [4, 4, 30, 40], "class": "person", "score": 0.41}],
    }
    body.update(over)
    return body


class Reviewer:
    """A signed-in reviewer: its own cookie jar and CSRF token."""

    def __init__(self, app, username: str, password: str = PASSWORD):
        self.username = username
        self.http = TestClient(app)
        self.csrf = self.page_csrf("/login")
        r = self.http.post("/login", data={"username": username, "password": password, "csrf_token": self.csrf,
                                           "next": "/queue"}, follow_redirects=False)
        assert r.status_code == 303, r.text
        self.csrf = self.page_csrf("/queue")

    def page_csrf(self, path: str) -> str:
        r = self.http.get(path)
        m = re.search(r'name="csrf-token" content="([^"]+)"', r.text)
        assert m, r.text[:500]
        return m.group(1)

    def post(self, path: str, json=None, **kw):
        headers = {"X-CSRF-Token": self.csrf, **kw.pop("headers", {})}
        return self.http.post(path, json=json, headers=headers, **kw)

    def get(self, path: str, **kw):
        return self.http.get(path, **kw)

    def claim_next(self, **filters) -> dict | None:
        r = self.post("/api/claim-next", params=filters)
        assert r.status_code == 200, r.text
        return r.json()["item"]


def mp4(path: Path, frames: int = 6, size: tuple[int, int] = (64, 48)) -> Path:
    """A real (MPEG-4 part 2) video file: clips are checked by content."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 20 * i, np.uint8))
    writer.release()
    assert path.stat().st_size > 0
    return path


class Env:
    def __init__(self, db_url: str, tmp_path: Path, claim_minutes: float = 10.0, **settings):
        self.clock = Clock()
        self.evidence = tmp_path / "evidence"
        self.evidence.mkdir()
        self.settings = ReviewSettings(db_url=db_url, data_dir=tmp_path / "data", evidence_root=self.evidence,
                                       classes=CLASSES, claim_minutes=claim_minutes, **settings)
        self.db = Database(db_url, clock=self.clock)
        self.app = create_app(self.settings, self.db)
        with self.db.write() as s:
            for name in ("alice", "bob"):
                add_reviewer(s, name, PASSWORD, 5, self.clock())
            self.token = add_device_token(s, "jetson-01", self.clock())
            self.uploader_token = add_device_token(s, "uploader", self.clock(), any_device=True)
        self.device = TestClient(self.app)

    def metrics(self) -> str:
        """/metrics as Prometheus scrapes it: with a Bearer token."""
        r = self.device.get("/metrics", headers={"Authorization": f"Bearer {self.token}"})
        assert r.status_code == 200, r.text[:300]
        return r.text

    def ingest(self, body: dict):
        return self.device.post("/api/items", json=body, headers={"Authorization": f"Bearer {self.token}"})

    def add(self, *items: dict) -> None:
        for body in items:
            r = self.ingest(body)
            assert r.status_code == 201, r.text

    def reviewer(self, username: str) -> Reviewer:
        return Reviewer(self.app, username)


@pytest.fixture
def env(db_url: str, tmp_path: Path):
    e = Env(db_url, tmp_path)
    try:
        yield e
    finally:
        e.db.dispose()
