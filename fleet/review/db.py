"""Engines, transactions and migrations.

SQLite (the embedded default) allows one writer at a time. A transaction that reads and then
writes can fail at once with SQLITE_BUSY when another writer got in between, so write
transactions start with BEGIN IMMEDIATE (they wait on the busy timeout instead), while reads
stay plain BEGIN and run concurrently under WAL. Within one server process the writers also
queue on a lock: SQLite's busy handler waits by sleeping and polling, which under 20 concurrent
reviewers turns a few milliseconds of work into 100 ms stalls. On PostgreSQL both are ordinary transactions
and row locks (SELECT ... FOR UPDATE [SKIP LOCKED]) do the work.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from fleet.review.models import AppSetting
from fleet.review.storage import private_dir, private_file

MIGRATIONS = Path(__file__).with_name("migrations")
WRITE_OPTION = "edgecv_review_write"


def make_engine(url: str, pool_size: int = 10) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError(f"db url {url!r}: use an SQLite file (several connections share it)")
        private_dir(Path(parsed.database).parent, tighten=False)
        private_file(Path(parsed.database))  # SQLite gives -wal and -shm the database file's mode
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=pool_size, max_overflow=20)
        _sqlite_transactions(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":  # the installed driver is psycopg 3
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return create_engine(url, pool_size=pool_size, max_overflow=20, pool_pre_ping=True)
    raise ValueError(f"db url {url!r}: only sqlite:/// and postgresql:// are supported")


def _sqlite_transactions(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # the driver emits no BEGIN; we do, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")


class Database:
    """Sessions for reads and for writes over one engine, plus the clock everything uses (tests move it)."""

    def __init__(self, url: str, clock: Callable[[], float] = time.time, pool_size: int = 10):
        self.url = url
        self.engine = make_engine(url, pool_size)
        self.dialect = self.engine.dialect.name
        self.clock = clock
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False)
        self._writer = threading.Lock() if self.dialect == "sqlite" else None

    def describe(self) -> str:
        """Which database, for the start-up line: the SQLite file, or the PostgreSQL URL without its password."""
        url = make_url(self.url)
        if self.dialect == "sqlite":
            return f"SQLite {Path(url.database).resolve()}"
        return f"PostgreSQL {url.render_as_string(hide_password=True)}"

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def now(self) -> float:
        return self.clock()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as s, s.begin():
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction; commits on success, rolls back on any exception (nothing half-done)."""
        if self._writer is None:
            with self._write() as s, s.begin():
                yield s
            return
        with self._writer, self._write() as s, s.begin():
            yield s

    def migrate(self) -> None:
        migrate(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to `revision` with Alembic's command API (run at every start-up; idempotent)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def get_setting(s: Session, key: str) -> str | None:
    return s.scalar(select(AppSetting.value).where(AppSetting.key == key))


def set_setting(s: Session, key: str, value: str) -> None:
    row = s.get(AppSetting, key)
    if row is None:
        s.add(AppSetting(key=key, value=value))
    else:
        row.value = value

