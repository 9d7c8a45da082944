"""A durable on-disk FIFO of outgoing MQTT messages (topic, payload bytes), for app.alerts.publisher.

Why SQLite in WAL mode rather than hand-made segment files: appends and deletes are atomic transactions
that survive a process crash (and, with synchronous=FULL, a power cut), order comes for free from an
AUTOINCREMENT key, and there is no compaction or torn-write recovery code to get wrong. It is in the
standard library. One writer process per spool directory is enforced with a lock file.

Messages leave the spool only through `remove()`, which app.alerts.publisher calls after the broker's PUBACK.
If the directory already holds a database SQLite cannot read, it is renamed aside (never deleted) and a
fresh spool is started, so a corrupt file neither stops alerts nor loses what it held.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DB_NAME = "spool.db"


class SpoolLocked(RuntimeError):
    """Another process already uses this spool directory."""


class SpoolWriteError(OSError):
    """The spool could not commit (disk full, I/O error); nothing of the failed call was stored."""

    def __init__(self, message: str, disk_full: bool):
        super().__init__(message)
        self.disk_full = disk_full


@dataclass(frozen=True, slots=True)
class SpoolItem:
    seq: int  # increasing, never reused: the send order
    topic: str
    payload: bytes


class Spool:
    """Durable FIFO in `directory`. Thread safe. `with Spool(dir) as s: s.append(topic, payload)`.

    max_items bounds the disk used while the broker is away: past it the oldest messages are dropped
    with an error in the log (counted in `dropped`). synchronous: "FULL" (survives power loss) or
    "NORMAL" (survives a process crash; the last commits may be lost on power loss, appends are faster).
    """

    def __init__(self, directory: str | os.PathLike, max_items: int = 1_000_000, synchronous: str = "FULL"):
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"spool synchronous must be FULL or NORMAL, not {synchronous!r}")
        if max_items < 1:
            raise ValueError(f"spool max_items must be >= 1, not {max_items}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / DB_NAME
        self.max_items = max_items
        self.dropped = 0
        self._lock = threading.Lock()
        self._lockfile = (self.directory / "spool.lock").open("a+")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise SpoolLocked(f"{self.directory}: spool is in use by another process (lock on spool.lock)") from None
        try:
            self._db = self._open(synchronous)
        except sqlite3.OperationalError as e:
            # Not corrupt (that is a plain DatabaseError): no room for its journal, an I/O error. Keep the file.
            self._lockfile.close()
            raise _write_error(self.path, e) from e
        except sqlite3.DatabaseError as e:
            self._db = self._set_aside(e, synchronous)
        self._count = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]

    def _set_aside(self, e: sqlite3.DatabaseError, synchronous: str) -> sqlite3.Connection:
        aside = self.path.with_name(f"{DB_NAME}.corrupt-{int(time.time())}")
        log.error("%s: unreadable spool (%s); moved to %s, starting a new one", self.path, e, aside.name)
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(f"{aside}{suffix}")
        return self._open(synchronous)

    def _open(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS spool ("
                "seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, created REAL)"
            )
            db.execute("SELECT COUNT(*) FROM spool").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def append(self, topic: str, payload: bytes) -> int:
        """Store one message durably; returns its sequence number."""
        return self.extend([(topic, payload)])[-1]

    def extend(self, messages: Iterable[tuple[str, bytes]]) -> list[int]:
        """Store several messages in one transaction (one disk sync); returns their sequence numbers."""
        rows = [(topic, bytes(payload), time.time()) for topic, payload in messages]
        if not rows:
            return []
        with self._lock:
            with self._write():
                seqs = [
                    self._db.execute("INSERT INTO spool (topic, payload, created) VALUES (?, ?, ?)", r).lastrowid
                    for r in rows
                ]
                over = self._count + len(rows) - self.max_items
                if over > 0:
                    self._db.execute(
                        "DELETE FROM spool WHERE seq IN (SELECT seq FROM spool ORDER BY seq LIMIT ?)", (over,)
                    )
            self._count += len(rows) - max(over, 0)
            if over > 0:
                self.dropped += over
                log.error("%s: spool full (%d messages); dropped the %d oldest", self.path, self.max_items, over)
        return seqs

    def peek(self, limit: int, after: int = 0) -> list[SpoolItem]:
        """Up to `limit` oldest messages with seq > after, in order (they stay in the spool)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload FROM spool WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [SpoolItem(seq, topic, bytes(payload)) for seq, topic, payload in rows]

    def remove(self, seqs: Iterable[int]) -> None:
        """Delete delivered messages (unknown seqs are ignored) in one transaction."""
        seqs = list(seqs)
        if not seqs:
            return
        with self._lock:
            with self._write():
                removed = self._db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs]).rowcount
            self._count -= removed

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction: COMMIT on success; on failure ROLLBACK (when SQLite has not already) and
        raise, an OperationalError (disk full, I/O) as the spool's own write error."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._rollback()
            raise _write_error(self.path, exc) from exc
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        # SQLite may already have rolled back itself (it does on SQLITE_FULL): a second ROLLBACK would
        # raise "no transaction is active" and hide the real error.
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.error("%s: rollback failed: %s", self.path, exc)

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if not self._lockfile.closed:
                fcntl.flock(self._lockfile, fcntl.LOCK_UN)
                self._lockfile.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_error(path: Path, exc: sqlite3.OperationalError) -> SpoolWriteError:
    text = str(exc)
    # SQLITE_FULL says so; growing the WAL index on a full disk says "disk I/O error": look at the disk too.
    full = "full" in text.lower() or getattr(exc, "sqlite_errorcode", None) == 13
    if not full:
        try:
            full = shutil.disk_usage(path.parent).free < (256 << 10)
        except OSError:
            pass
    return SpoolWriteError(f"{path}: cannot write the spool: {text}", disk_full=full)
