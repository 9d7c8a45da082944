"""Evidence upload and local retention.

Each package directory (written atomically by app.evidence.packager) is uploaded to the evidence store
(S3 API) under `<prefix>/<event_id>/`, then marked with a `.uploaded` file. Retention keeps the
local directory under its disk budget by deleting the OLDEST UPLOADED packages first, and never
deletes a package that is not uploaded: when only un-uploaded packages remain over budget, new
evidence is refused (app.evidence.packager counts it in edgecv_evidence_refused_total) until the store is
back and the uploads catch up.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from app.metrics import Metrics

log = logging.getLogger(__name__)

UPLOADED = ".uploaded"
CONTENT_TYPES = {".json": "application/json", ".mp4": "video/mp4", ".jpg": "image/jpeg"}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class EvidenceStore:
    def __init__(
        self,
        root: Path,
        bucket: str,
        prefix: str,
        client_factory: Callable[[], object],
        budget_bytes: int,
        metrics: Metrics | None = None,
    ):
        self.root, self.bucket, self.prefix = Path(root), bucket, prefix.strip("/")
        self.client_factory = client_factory  # a boto3 S3 client factory (endpoint set for tests)
        self.budget_bytes = budget_bytes
        self.metrics = metrics
        self._client = None
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def client(self):
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    def packages(self) -> list[Path]:
        """Complete packages, oldest first (temp directories of packages being written are skipped)."""
        dirs = [d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        return sorted(dirs, key=lambda d: (d.stat().st_mtime, d.name))

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
            extra = {"ContentType": CONTENT_TYPES.get(f.suffix, "application/octet-stream")}
            self.client.upload_file(str(f), self.bucket, self.key(package, f.name), ExtraArgs=extra)
        (package / UPLOADED).touch()
        if self.metrics:
            self.metrics.evidence_uploaded.inc()

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

    def enforce_budget(self) -> int:
        """Delete the oldest uploaded packages while over budget. Returns bytes freed."""
        freed = 0
        used = self.usage()
        for package in self.packages():
            if used <= self.budget_bytes:
                break
            if self.is_uploaded(package):
                size = dir_bytes(package)
                shutil.rmtree(package, ignore_errors=True)
                used -= size
                freed += size
        self._report(used)
        return freed

    def has_room(self) -> bool:
        """The packager's admission check: is there room after deleting uploaded evidence?"""
        self.enforce_budget()
        return self.usage() < self.budget_bytes

    def _report(self, used: int | None = None) -> None:
        if self.metrics:
            self.metrics.evidence_pending.set(len(self.pending()))
            self.metrics.evidence_disk_bytes.set(self.usage() if used is None else used)


class Uploader(threading.Thread):
    """Background loop: upload pending evidence, enforce the budget; waits longer after failures."""

    def __init__(self, store: EvidenceStore, interval_s: float = 2.0, max_backoff_s: float = 60.0):
        super().__init__(name="evidence-uploader", daemon=True)
        self.store, self.interval_s, self.max_backoff_s = store, interval_s, max_backoff_s
        self.stopping = threading.Event()

    def run(self) -> None:
        wait = self.interval_s
        while not self.stopping.is_set():
            self.store.upload_pending()
            self.store.enforce_budget()
            failed = bool(self.store.pending())
            wait = min(wait * 2, self.max_backoff_s) if failed else self.interval_s
            self.stopping.wait(wait)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.join(timeout)
