"""Evidence upload and local retention.

Each package directory (written atomically by app.evidence.packager) is uploaded to the evidence store
(S3 API) under `<prefix>/<event_id>/`, then marked with a `.uploaded` file. Retention keeps the
local directory under its disk budget AND the file system above a free-space floor (bytes and percent:
the budget alone keeps filling a small disk) by deleting the OLDEST UPLOADED packages first, and never
deletes a package that is not uploaded: when only un-uploaded packages remain, new evidence is refused
(counted in edgecv_evidence_refused_total{reason="budget"|"free_space"}) until the uploads catch up.
The one exception is `shed()`: when the alert spool on the same disk cannot write, alerts win and the
oldest evidence goes, uploaded or not (counted, reason "shed").

The disk walks tolerate the packager renaming or deleting its `.tmp-*` folders under them (they are
skipped), and the uploader thread survives any failure of one pass (logged, counted, backed off).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from app.metrics import Metrics

log = logging.getLogger(__name__)

UPLOADED = ".uploaded"
CONTENT_TYPES = {".json": "application/json", ".mp4": "video/mp4", ".jpg": "image/jpeg"}


def dir_bytes(path: Path) -> int:
    """Bytes in the files under `path`, skipping hidden (temporary) folders and files that vanish meanwhile."""
    total = 0
    for top, dirs, files in os.walk(path, onerror=lambda _: None):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # the packager's .tmp-* folders come and go
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except FileNotFoundError:
                pass
    return total


def free_space(path: Path) -> tuple[int, float]:
    """(bytes free, percent free) of the file system holding `path`."""
    usage = shutil.disk_usage(path)
    return usage.free, 100.0 * usage.free / max(1, usage.total)


class EvidenceStore:
    def __init__(
        self,
        root: Path,
        bucket: str,
        prefix: str,
        client_factory: Callable[[], object],
        budget_bytes: int,
        metrics: Metrics | None = None,
        min_free_bytes: int = 0,
        min_free_percent: float = 0.0,
    ):
        self.root, self.bucket, self.prefix = Path(root), bucket, prefix.strip("/")
        self.client_factory = client_factory  # a boto3 S3 client factory (endpoint set for tests)
        self.budget_bytes = budget_bytes
        self.min_free_bytes, self.min_free_percent = min_free_bytes, min_free_percent
        self.metrics = metrics
        self.shed_count = 0
        self.admission_reason: str | None = None  # why the newest admission said no (None: it said yes)
        self._client = None
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def client(self):
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    def packages(self) -> list[Path]:
        """Complete packages, oldest first (temp directories of packages being written are skipped)."""
        dated = []
        for d in self.root.iterdir():
            if d.name.startswith("."):
                continue
            try:
                if d.is_dir():
                    dated.append((d.stat().st_mtime, d.name, d))
            except FileNotFoundError:  # deleted meanwhile (retention, shed)
                pass
        return [d for *_, d in sorted(dated)]

    @staticmethod
    def is_uploaded(package: Path) -> bool:
        return (package / UPLOADED).exists()

    def pending(self) -> list[Path]:
        return [p for p in self.packages() if not self.is_uploaded(p)]

    def key(self, package: Path, name: str) -> str:
        return f"{self.prefix}/{package.name}/{name}" if self.prefix else f"{package.name}/{name}"

    def upload(self, package: Path) -> None:
        # event.json last: a reader that sees it can rely on the clip and thumbnail being there.
        files = sorted((f for f in package.iterdir() if f.is_file() and f.name != UPLOADED),
                       key=lambda f: f.name == "event.json")
        for f in files:
            self.put_once(f, self.key(package, f.name))
        (package / UPLOADED).touch()
        if self.metrics:
            self.metrics.evidence_uploaded.inc()

    def put_once(self, path: Path, key: str) -> None:
        """Write `key` only if it does not exist (If-None-Match: *): a device can add evidence, never
        replace what it sent before. 412 means the object is there already: ours, from an attempt that
        failed after this file went up, since keys are <site>/<device>/<event id>/<file>."""
        from botocore.exceptions import ClientError

        with path.open("rb") as body:
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*",
                                       ContentType=CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "PreconditionFailed":
                    raise
                log.info("evidence %s is already in the store; not overwritten", key)

    def upload_pending(self) -> int:
        """Upload what is pending, oldest first; stops at the first failure (retried next pass)."""
        done = 0
        for package in self.pending():
            try:
                self.upload(package)
            except Exception as exc:  # botocore raises many kinds; all mean "try again later"
                log.warning("evidence upload of %s failed, will retry: %s", package.name, exc)
                self._client = None  # a fresh connection next time
                break
            done += 1
        self._report()
        return done

    def usage(self) -> int:
        return dir_bytes(self.root)

    def short_of_space(self) -> bool:
        """True when the file system is under its free-space floor (bytes or percent)."""
        free, percent = free_space(self.root)
        return free < self.min_free_bytes or percent < self.min_free_percent

    def enforce_budget(self) -> int:
        """Delete the oldest uploaded packages while over budget or under the free-space floor. Returns bytes freed."""
        freed = 0
        used = self.usage()
        for package in self.packages():
            if used <= self.budget_bytes and not self.short_of_space():
                break
            if self.is_uploaded(package):
                size = dir_bytes(package)
                shutil.rmtree(package, ignore_errors=True)
                used -= size
                freed += size
        self._report(used)
        return freed

    def admission(self) -> bool | str:
        """The packager's admission check after deleting uploaded evidence: True, or why not
        ("budget": local evidence over its budget; "free_space": the file system under its floor)."""
        self.enforce_budget()
        verdict: bool | str = True
        if self.usage() >= self.budget_bytes:
            verdict = "budget"
        elif self.short_of_space():
            verdict = "free_space"
        self.admission_reason = None if verdict is True else verdict
        if self.metrics:
            self.metrics.disk_full.labels("evidence").set(1 if verdict == "free_space" else 0)
        return verdict

    def has_room(self) -> bool:
        return self.admission() is True

    def shed(self) -> int:
        """Make room for alerts on a full disk: delete the oldest package (uploaded ones first, then any).
        Returns bytes freed (0: nothing left to delete)."""
        packages = self.packages()
        uploaded = [p for p in packages if self.is_uploaded(p)]
        for package in (uploaded or packages)[:1]:
            size = dir_bytes(package)
            shutil.rmtree(package, ignore_errors=True)
            if package not in uploaded:
                self.shed_count += 1
                log.error("evidence %s deleted before upload: the alert spool needed the space", package.name)
                if self.metrics:
                    self.metrics.evidence_refused.labels("shed").inc()
            self._report()
            return max(size, 1)
        return 0

    def _report(self, used: int | None = None) -> None:
        if self.metrics:
            self.metrics.evidence_pending.set(len(self.pending()))
            self.metrics.evidence_disk_bytes.set(self.usage() if used is None else used)


class Uploader(threading.Thread):
    """Background loop: upload pending evidence, enforce the budget; waits longer after failures.
    A pass that raises (a disk walk racing the packager, a full disk) is logged, counted and retried."""

    def __init__(self, store: EvidenceStore, interval_s: float = 2.0, max_backoff_s: float = 60.0):
        super().__init__(name="evidence-uploader", daemon=True)
        self.store, self.interval_s, self.max_backoff_s = store, interval_s, max_backoff_s
        self.stopping = threading.Event()
        self.errors = 0

    def run(self) -> None:
        wait = self.interval_s
        while not self.stopping.is_set():
            try:
                self.store.upload_pending()
                self.store.enforce_budget()
                failed = bool(self.store.pending())
            except Exception:
                self.errors += 1
                if self.store.metrics:
                    self.store.metrics.thread_errors.labels(self.name).inc()
                log.exception("evidence uploader: pass failed; retrying")
                failed = True
            wait = min(wait * 2, self.max_backoff_s) if failed else self.interval_s
            self.stopping.wait(wait)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.join(timeout)
