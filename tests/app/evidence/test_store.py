"""Uploader against a real S3 API server (moto's) on 127.0.0.1: outages, retries, retention."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from app.evidence.store import EvidenceStore, Uploader
from app.metrics import Metrics
from fleet.local.procs import free_port

pytestmark = pytest.mark.integration
BUCKET = "edgecv-evidence"


@pytest.fixture
def s3_server():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    server.port = port
    yield server
    server.stop()


def client_factory(port: int):
    def make():
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
            aws_access_key_id="test", aws_secret_access_key="test",
            config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}),
        )
    return make


def make_package(root: Path, name: str, size: int = 10_000, age: float = 0.0) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "clip.mp4").write_bytes(b"\0" * size)
    (d / "event.json").write_text(json.dumps({"event_id": name}))
    (d / "thumbnail.jpg").write_bytes(b"\xff\xd8" + b"\0" * 100)
    t = time.time() - 1000 + age
    os.utime(d, (t, t))
    return d


def keys(port: int) -> set[str]:
    listing = client_factory(port)().list_objects_v2(Bucket=BUCKET)
    return {o["Key"] for o in listing.get("Contents", [])}


def test_uploads_survive_the_store_being_down(s3_server, tmp_path: Path):
    port = s3_server.port
    client_factory(port)().create_bucket(Bucket=BUCKET)
    metrics = Metrics()
    store = EvidenceStore(tmp_path, BUCKET, "site-a/dev-1", client_factory(port), 10 << 20, metrics)
    make_package(tmp_path, "evt-1", age=1)
    assert store.upload_pending() == 1
    assert "site-a/dev-1/evt-1/event.json" in keys(port)

    s3_server.stop()  # the evidence store goes away
    for i in (2, 3, 4):
        make_package(tmp_path, f"evt-{i}", age=i)
    assert store.upload_pending() == 0
    assert [p.name for p in store.pending()] == ["evt-2", "evt-3", "evt-4"]
    assert metrics.evidence_pending._value.get() == 3

    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3_server.start()  # moto restarts empty: recreate the bucket as the real store would still have it
    try:
        client_factory(port)().create_bucket(Bucket=BUCKET)
        uploader = Uploader(store, interval_s=0.1)
        uploader.start()
        deadline = time.monotonic() + 20
        while store.pending() and time.monotonic() < deadline:
            time.sleep(0.1)
        uploader.stop()
        assert store.pending() == []
        assert {f"site-a/dev-1/evt-{i}/{n}" for i in (2, 3, 4) for n in ("clip.mp4", "event.json", "thumbnail.jpg")} \
            <= keys(port)
    finally:
        s3_server.stop()


def test_retention_never_deletes_what_is_not_uploaded(s3_server, tmp_path: Path):
    port = s3_server.port
    client_factory(port)().create_bucket(Bucket=BUCKET)
    store = EvidenceStore(tmp_path, BUCKET, "s/d", client_factory(port), budget_bytes=25_000)
    for i in range(3):
        make_package(tmp_path, f"old-{i}", age=i)
    store.upload_pending()  # three uploaded packages (~10 kB each)
    for i in range(3):
        make_package(tmp_path, f"new-{i}", age=10 + i)  # not uploaded: the store is about to vanish
    s3_server.stop()
    freed = store.enforce_budget()
    names = {p.name for p in store.packages()}
    # Only uploaded ones may go, oldest first, until under budget... which un-uploaded data prevents.
    assert {"new-0", "new-1", "new-2"} <= names
    assert not {"old-0", "old-1", "old-2"} & names
    assert freed > 0
    assert not store.has_room()  # over budget with un-uploaded evidence only: refuse new evidence


def test_oldest_uploaded_goes_first(s3_server, tmp_path: Path):
    port = s3_server.port
    client_factory(port)().create_bucket(Bucket=BUCKET)
    store = EvidenceStore(tmp_path, BUCKET, "", client_factory(port), budget_bytes=25_000)
    for i in range(3):
        make_package(tmp_path, f"e{i}", age=i)
    store.upload_pending()
    store.enforce_budget()
    assert [p.name for p in store.packages()] == ["e1", "e2"]
    assert store.has_room()


def test_disk_walks_survive_the_packager_renaming_its_temp_folders(s3_server, tmp_path: Path):
    # The packager builds each package in .tmp-<id> and renames it into place (or deletes it): a walk that
    # stats files it listed a moment earlier used to die of FileNotFoundError (and took the uploader with it).
    import threading

    store = EvidenceStore(tmp_path, BUCKET, "s/d", client_factory(s3_server.port), budget_bytes=1 << 30)
    stop = threading.Event()

    def churn():
        k = 0
        while not stop.is_set():
            tmp = tmp_path / f".tmp-{k}"
            tmp.mkdir()
            for i in range(30):
                (tmp / f"f{i}").write_bytes(b"x")
            if k % 2:
                os.rename(tmp, tmp_path / f"pkg-{k}")
            else:
                for f in tmp.iterdir():
                    f.unlink()
                tmp.rmdir()
            k += 1

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        errors = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                store.usage()
                store.admission()
            except OSError as exc:
                errors.append(exc)
        assert errors == []
    finally:
        stop.set()
        t.join(5)


def test_uploader_outlives_a_failing_pass_and_counts_it(s3_server, tmp_path: Path):
    import shutil

    client_factory(s3_server.port)().create_bucket(Bucket=BUCKET)
    metrics = Metrics()
    root = tmp_path / "evidence"
    store = EvidenceStore(root, BUCKET, "s/d", client_factory(s3_server.port), 10 << 20, metrics)
    uploader = Uploader(store, interval_s=0.05, max_backoff_s=0.2)
    uploader.start()
    try:
        shutil.rmtree(root)  # the evidence folder vanishes under the uploader (a remount, an operator)
        deadline = time.monotonic() + 10
        while metrics.thread_errors.labels("evidence-uploader")._value.get() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metrics.thread_errors.labels("evidence-uploader")._value.get() >= 2
        assert uploader.is_alive()
        root.mkdir()
        make_package(root, "evt-back")
        deadline = time.monotonic() + 10
        while store.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.pending() == [] and "s/d/evt-back/event.json" in keys(s3_server.port)
    finally:
        uploader.stop()


def test_free_space_floor_refuses_evidence_and_says_why(s3_server, tmp_path: Path):
    client_factory(s3_server.port)().create_bucket(Bucket=BUCKET)
    metrics = Metrics()
    free = shutil_free(tmp_path)
    store = EvidenceStore(tmp_path, BUCKET, "s/d", client_factory(s3_server.port), 1 << 40, metrics,
                          min_free_bytes=free * 2)  # a floor above what the disk has: nothing may be kept
    make_package(tmp_path, "up", age=1)
    store.upload_pending()
    make_package(tmp_path, "not-up", age=2)
    assert store.admission() == "free_space"
    assert [p.name for p in store.packages()] == ["not-up"]  # the uploaded one went first; the other stays
    assert metrics.disk_full.labels("evidence")._value.get() == 1
    store.min_free_bytes = 0
    assert store.admission() is True and metrics.disk_full.labels("evidence")._value.get() == 0


def shutil_free(path: Path) -> int:
    import shutil

    return shutil.disk_usage(path).free


def test_evidence_already_in_the_store_is_never_overwritten(s3_server, tmp_path: Path):
    # moto honours If-None-Match: * on PutObject (412 PreconditionFailed), as S3 does since 2024.
    port = s3_server.port
    s3 = client_factory(port)()
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="s/d/evt-1/event.json", Body=b'{"event_id": "evt-1", "first": true}')
    sent = []
    s3.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(request.headers.get("If-None-Match")))
    store = EvidenceStore(tmp_path / "buf", BUCKET, "s/d", lambda: s3, budget_bytes=10 << 20)
    make_package(tmp_path / "buf", "evt-1")
    assert store.upload_pending() == 1  # a 412 means "already there": the package counts as uploaded
    assert json.loads(s3.get_object(Bucket=BUCKET, Key="s/d/evt-1/event.json")["Body"].read())["first"] is True
    assert "s/d/evt-1/clip.mp4" in keys(port)
    assert len(sent) == 3 and {h.decode() if isinstance(h, bytes) else h for h in sent} == {"*"}


def test_a_retry_after_a_partial_upload_completes_the_package(s3_server, tmp_path: Path):
    port = s3_server.port
    s3 = client_factory(port)()
    s3.create_bucket(Bucket=BUCKET)
    store = EvidenceStore(tmp_path, BUCKET, "s/d", lambda: s3, budget_bytes=10 << 20)
    package = make_package(tmp_path, "evt-9")
    store.put_once(package / "clip.mp4", store.key(package, "clip.mp4"))  # the first attempt got this far
    assert store.upload_pending() == 1
    assert {f"s/d/evt-9/{n}" for n in ("clip.mp4", "event.json", "thumbnail.jpg")} <= keys(port)


def test_the_uploader_signs_with_the_configured_profiles_credential_process(tmp_path: Path, monkeypatch):
    # The profile roles/aws_device_identity writes: credential_process -> the signing-helper stand-in.
    from app.config import EvidenceStoreConfig
    from app.runner import _s3_factory
    from tests.support import aws_signing_helper_standin as standin

    for name, pem in (("device.crt", "CERTIFICATE"), ("device.key", "PRIVATE KEY")):
        (tmp_path / name).write_text(f"-----BEGIN {pem}-----\nx\n-----END {pem}-----\n")
    arn = "arn:aws:rolesanywhere:eu-west-1:111122223333"
    (tmp_path / "config").write_text(
        "[profile edgecv-device]\nregion = eu-west-1\n"
        f"credential_process = {sys.executable} {standin.__file__} credential-process --certificate {tmp_path}/device.crt "
        f"--private-key {tmp_path}/device.key --trust-anchor-arn {arn}:trust-anchor/t --profile-arn {arn}:profile/p "
        "--role-arn arn:aws:iam::111122223333:role/device\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    client = _s3_factory(EvidenceStoreConfig(bucket="edgecv-evidence", region="eu-west-1", profile="edgecv-device"))()
    creds = client._request_signer._credentials.get_frozen_credentials()
    assert (creds.access_key, creds.token) == (standin.ACCESS_KEY, standin.SESSION_TOKEN)
