"""The holes a penetration test found, each shut: every test here failed before the fix (issue #18, items 1-7)."""

from __future__ import annotations

import base64
import os
import stat
import threading
import time

import pytest
from argon2 import PasswordHasher, profiles
from click.testing import CliRunner
from sqlalchemy import select

from fleet.cli import main
from fleet.review import auth
from fleet.review.db import get_setting
from fleet.review.export import export_coco
from fleet.review.fetch import FetchRefused, allowed, check_addresses, fetch_image
from fleet.review.models import Item
from fleet.review.storage import KEY_FILE, SECRET_ENV, StorageError, session_key
from tests.fleet.review.conftest import PASSWORD, Env, TestClient, item, jpeg, mp4


def login(client, username: str, password: str = PASSWORD):
    import re

    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/login").text).group(1)
    return client.post("/login", data={"username": username, "password": password, "csrf_token": token},
                       follow_redirects=False)


# --- 1. the body is read only after the token is checked, and never past a cap ---------------------------

def test_ingest_checks_the_token_before_the_body(env):
    assert env.device.post("/api/items", content=b"{not json").status_code == 401  # was 422: body parsed first
    r = env.device.post("/api/items", content=b"x" * 100, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_bodies_over_the_cap_are_413(db_url, tmp_path):
    env = Env(db_url, tmp_path, max_body_bytes=50_000, max_form_bytes=20_000)
    try:
        auth_header = {"Authorization": f"Bearer {env.token}"}
        big = item("big", image=base64.b64encode(os.urandom(60_000)).decode())
        assert env.device.post("/api/items", json=big, headers=auth_header).status_code == 413

        def chunks():  # no Content-Length: counted while it streams in
            for _ in range(10):
                yield b" " * 10_000
        r = env.device.post("/api/items", content=chunks(), headers={**auth_header, "Content-Type": "application/json"})
        assert r.status_code == 413
        assert env.device.post("/login", content=b"a=" + b"x" * 30_000).status_code == 413  # other routes too
        assert env.ingest(item("small")).status_code == 201
    finally:
        env.db.dispose()


# --- 2. export fetches only from allowed evidence stores, never loopback/link-local, only images ----------

def test_export_does_not_fetch_internal_urls(db_url, tmp_path):
    import http.server

    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # an "internal service" with a secret
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"secret": "s3cr3t"}')

        def log_message(self, *a):
            pass

    internal = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=internal.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{internal.server_port}/evidence/"
    env = Env(db_url, tmp_path, image_url_allow=[base])
    try:
        env.add(item("u1", image=None, image_url=base + "frame.jpg", width=64, height=48))
        alice = env.reviewer("alice")
        alice.claim_next()
        alice.post("/api/items/u1/approve")
        summary = export_coco(env.db, env.settings, tmp_path / "out", skip_missing=True)
        assert summary["images"] == 0 and "loopback" in summary["missing"][0]
        assert hits == []  # the allowed store resolves to loopback: not even asked
    finally:
        internal.shutdown()
        env.db.dispose()


def test_fetch_rules():
    allow = ["https://store.example/bucket-a/"]
    assert allowed("https://store.example/bucket-a/x/1.jpg", allow)
    for url in ("https://store.example/bucket-b/1.jpg", "http://store.example/bucket-a/1.jpg",
                "https://store.example:8443/bucket-a/1.jpg", "https://user@store.example/bucket-a/1.jpg",
                "https://store.example/bucket-a/../bucket-b/1.jpg", "https://store.example.evil/bucket-a/1.jpg"):
        with pytest.raises(FetchRefused) if "@" in url or ".." in url else _no_raise():
            assert not allowed(url, allow), url
    for address in ("127.0.0.1", "::1", "169.254.169.254", "fe80::1", "0.0.0.0", "::ffff:127.0.0.1"):
        with pytest.raises(FetchRefused, match="never fetched"):
            check_addresses("store.example", 443, lambda h, p, a=address: [a])
    check_addresses("store.example", 443, lambda h, p: ["93.184.216.34"])


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_fetched_bytes_must_be_an_image(monkeypatch):
    class Reply:
        is_redirect, headers = False, {}

        def __init__(self, data):
            self.data = data

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def raise_for_status(self):
            pass

        def iter_content(self, n):
            yield self.data

    class Http:
        def __init__(self, data):
            self.data = data

        def get(self, url, **kw):
            assert kw["allow_redirects"] is False
            return Reply(self.data)

    public = lambda h, p: ["93.184.216.34"]  # noqa: E731
    url, allow = "https://store.example/b/1.jpg", ["https://store.example/b/"]
    assert fetch_image(url, allow, 1 << 20, resolver=public, http=Http(jpeg())) == jpeg()
    with pytest.raises(FetchRefused, match="not an image"):
        fetch_image(url, allow, 1 << 20, resolver=public, http=Http(b'{"secret": 1}'))
    with pytest.raises(FetchRefused, match="more than"):
        fetch_image(url, allow, 100, resolver=public, http=Http(jpeg()))


# --- 3. sessions live on the server: logout, disabling and a new password end them ----------------------

def _stolen(env, cookie: str):
    c = TestClient(env.app)
    c.cookies.set("edgecv_review", cookie)
    return c


def test_logout_ends_the_session_even_for_a_saved_cookie(env):
    alice = env.reviewer("alice")
    saved = alice.http.cookies.get("edgecv_review")
    assert _stolen(env, saved).get("/api/progress").status_code == 200
    r = alice.http.post("/logout", data={"csrf_token": alice.csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert _stolen(env, saved).get("/api/progress").status_code == 401


def test_disabling_a_reviewer_or_changing_the_password_ends_their_sessions(env, db_url, tmp_path):
    alice, bob = env.reviewer("alice"), env.reviewer("bob")
    args = ["--db", db_url, "--data-dir", str(env.settings.data_dir)]
    r = CliRunner().invoke(main, ["review", "disable-user", "alice", *args])
    assert r.exit_code == 0, r.output
    assert alice.get("/api/progress").status_code == 401
    assert login(TestClient(env.app), "alice").status_code == 401
    r = CliRunner().invoke(main, ["review", "add-user", "bob", "--update", "--new-password", *args],
                           input="a new long password\n")
    assert r.exit_code == 0, r.output
    assert bob.get("/api/progress").status_code == 401
    assert login(TestClient(env.app), "bob", "a new long password").status_code == 303


# --- 4. the signing key is not in the database; files are private --------------------------------------

def test_session_key_lives_outside_the_database_and_files_are_private(env, db_url):
    with env.db.read() as s:
        assert get_setting(s, "session_secret") is None
    data = env.settings.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / KEY_FILE).stat().st_mode) == 0o600
    env.add(item("i1"))
    assert stat.S_IMODE((data / "images" / "i1.jpg").stat().st_mode) == 0o600
    if db_url.startswith("sqlite"):
        assert stat.S_IMODE((data.parent / "db" / "review.db").stat().st_mode) == 0o600
    (data / KEY_FILE).chmod(0o644)
    with pytest.raises(StorageError, match="others can read it"):
        session_key(data)  # a key others could read is refused, not used
    (data / KEY_FILE).chmod(0o600)
    assert session_key(data) == session_key(data)  # every process sharing the data dir agrees


def test_session_key_from_the_environment(monkeypatch, db_url, tmp_path):
    monkeypatch.setenv(SECRET_ENV, "k" * 40)
    env = Env(db_url, tmp_path)
    try:
        assert not (env.settings.data_dir / KEY_FILE).exists()
        assert env.reviewer("alice").get("/api/progress").status_code == 200
    finally:
        env.db.dispose()


# --- 5. sign-in floods: argon2 outside transactions, per-address limit, per-user delay ------------------

class GatedHasher(PasswordHasher):
    """A password check that holds until the test releases it: a slow argon2 without a clock, so the
    test asks "did the reviewer finish while sign-ins were still hashing?" however loaded the machine."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inside = threading.Semaphore(0)
        self.release = threading.Event()

    def verify(self, hash, password):
        self.inside.release()
        self.release.wait(60)
        return super().verify(hash, password)


def test_a_login_flood_does_not_stall_reviewers(env):
    alice = env.reviewer("alice")
    env.add(item("i1"))
    hasher = GatedHasher.from_parameters(profiles.CHEAPEST)
    auth.use_hasher(hasher)
    approved, done = [], threading.Event()

    def review():
        it = alice.claim_next()
        approved.append(alice.post(f"/api/items/{it['id']}/approve").status_code)
        done.set()

    floods = [threading.Thread(target=login, args=(TestClient(env.app), f"nobody{n}", "whatever1"))
              for n in range(2)]
    reviewer = threading.Thread(target=review)
    try:
        for t in floods:
            t.start()
        inside = sum(hasher.inside.acquire(timeout=30) for _ in floods)
        assert inside == len(floods), "a sign-in waited for another's password check (a lock held across it)"
        reviewer.start()
        finished = done.wait(30)  # a transaction held across the hash would block this until release
    finally:
        hasher.release.set()
        for t in (*floods, reviewer):
            if t.ident is not None:  # started
                t.join(60)
        auth.use_hasher(PasswordHasher.from_parameters(profiles.CHEAPEST))
    assert finished, "claim+approve waited for the sign-ins' password checks"
    assert approved == [200]


def test_one_address_guessing_many_usernames_is_refused_others_are_not(db_url, tmp_path):
    env = Env(db_url, tmp_path, login_address_max_failures=3)
    try:
        mallory = TestClient(env.app, client=("203.0.113.9", 5000))
        for n in range(3):
            assert login(mallory, f"guess{n}", "whatever1").status_code == 401
        r = login(mallory, "alice")
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        assert login(TestClient(env.app, client=("198.51.100.7", 5000)), "alice").status_code == 303
        env.clock.advance(env.settings.login_window_minutes * 60 + 1)
        assert login(mallory, "alice").status_code == 303
    finally:
        env.db.dispose()


def test_guessing_one_username_delays_it_but_never_locks_the_user_out(db_url, tmp_path):
    env = Env(db_url, tmp_path, login_max_failures=2, login_max_delay_s=2.0)
    try:
        for n in range(4):  # from four addresses: the per-address limit does not apply
            assert login(TestClient(env.app, client=(f"203.0.113.{n}", 5000)), "alice", "guess-123").status_code == 401
        start = time.perf_counter()
        assert login(TestClient(env.app), "alice").status_code == 303  # the real user gets in ...
        assert time.perf_counter() - start >= 1.9  # ... after a delay (0.5 s doubled twice, cap 2 s)
        start = time.perf_counter()
        assert login(TestClient(env.app), "bob").status_code == 303  # other usernames are not slowed:
        assert time.perf_counter() - start < 1.0  # half the delay leaves room for a loaded machine
    finally:
        env.db.dispose()


# --- 6. headers; /metrics and OpenAPI need sign-in; no usernames in metrics -----------------------------

def test_security_headers(env):
    anon = TestClient(env.app)
    for path in ("/login", "/api/progress", "/healthz"):
        h = anon.get(path).headers
        assert "frame-ancestors 'none'" in h["content-security-policy"] and "script-src 'self'" in h[
            "content-security-policy"], path
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
        assert h["cache-control"] == "no-store", path
    alice = env.reviewer("alice")
    assert alice.get("/queue").headers["cache-control"] == "no-store"
    assert "style=" not in alice.get("/queue").text  # the CSP allows no inline styles


# --- 7. tokens bound to devices, conflicting ids, clips by content, paths -------------------------------

def test_a_token_files_items_only_for_its_device(env):
    r = env.ingest(item("x1", device="jetson-99"))
    assert r.status_code == 403 and "jetson-01" in r.text
    ok = env.device.post("/api/items", json=item("x1", device="jetson-99"),
                         headers={"Authorization": f"Bearer {env.uploader_token}"})
    assert ok.status_code == 201


def test_an_existing_id_with_other_content_is_409(env):
    env.add(item("x1"))
    r = env.device.post("/api/items", json=item("x1", device="jetson-02"),
                        headers={"Authorization": f"Bearer {env.uploader_token}"})
    assert r.status_code == 409
    with env.db.read() as s:
        assert s.get(Item, "x1").device == "jetson-01"


@pytest.mark.parametrize("field, value, message", [
    ("clip_path", "clips/not-a-video.mp4", "not a video"),
    ("clip_path", "/etc/passwd", "absolute"),
    ("image_path", "/etc/hostname", "absolute"),
    ("clip_path", "clips/a\x00.mp4", "NUL"),
    ("camera", "cam\x00", "pattern"),
])
def test_bad_paths_and_clips_are_422(env, field, value, message):
    (env.evidence / "clips").mkdir()
    (env.evidence / "clips" / "not-a-video.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    body = item("p1", **({field: value} if field != "image_path" else {"image": None, "image_path": value}))
    r = env.ingest(body)
    assert r.status_code == 422 and message in r.text, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field]
    mp4(env.evidence / "clips" / "ok.mp4")
    assert env.ingest(item("p1", clip_path="clips/ok.mp4")).status_code == 201


def test_revoke_token_and_update_keeps_what_is_not_given(env, db_url):
    args = ["--db", db_url, "--data-dir", str(env.settings.data_dir)]
    run = CliRunner().invoke
    assert run(main, ["review", "revoke-token", "jetson-01", *args]).exit_code == 0
    assert env.ingest(item("r1")).status_code == 401
    r = run(main, ["review", "add-user", "alice", "--update", "--quota", "77", *args])
    assert r.exit_code == 0 and "quota 77" in r.output, r.output
    assert login(TestClient(env.app), "alice").status_code == 303  # the password was kept
    with env.db.read() as s:
        from fleet.review.models import Reviewer
        assert s.scalar(select(Reviewer.daily_quota).where(Reviewer.username == "alice")) == 77
    r = run(main, ["review", "add-user", "carol", *args], input="\n")
    assert r.exit_code == 2 and "stdin is not a terminal and its first line is empty" in r.output


# --- 1, against a real server process: 100 oversized unauthenticated POSTs leave its memory flat ----------

def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _oversized_post(port: int, declared: int, send: int, token: str | None = None) -> bytes:
    """Declare `declared` bytes, send `send` of them, and return the status line the server answers with."""
    import socket

    head = (f"POST /api/items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n" + (f"Authorization: Bearer {token}\r\n" if token else "") + "\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode())
        try:
            sock.sendall(b"[" * send)
        except OSError:
            pass  # the server may have answered and closed already
        return sock.recv(200).split(b"\r\n")[0]


def test_oversized_unauthenticated_posts_leave_server_memory_flat(tmp_path):
    import sys

    from fleet.local.procs import Service, free_port, http_ok

    data = tmp_path / "data"
    token = CliRunner().invoke(main, ["review", "add-token", "jetson-01", "--data-dir", str(data)]).output.strip()
    port = free_port()
    argv = [sys.executable, "-m", "fleet.cli", "review", "serve", "--data-dir", str(data), "--port", str(port),
            "--max-body-mb", "4"]
    with Service("review", argv, port, workdir=tmp_path, ready=lambda: http_ok(f"http://127.0.0.1:{port}/healthz")) \
            as svc:
        for _ in range(5):  # warm up: first requests allocate the server's own buffers
            assert b" 401 " in _oversized_post(port, 200 << 20, 256 << 10)
        before = _rss_kib(svc.proc.pid)
        start = time.perf_counter()
        for _ in range(100):  # 200 MB declared each: answered at once, body never read
            assert b" 401 " in _oversized_post(port, 200 << 20, 256 << 10)
        took = time.perf_counter() - start
        after = _rss_kib(svc.proc.pid)
        assert b" 413 " in _oversized_post(port, 200 << 20, 64 << 10, token)  # with a token: over the cap
    print(f"server RSS {before / 1024:.0f} MiB -> {after / 1024:.0f} MiB after 100 x 200 MB unauthenticated "
          f"POSTs ({took:.1f} s)")
    assert after - before < 20 * 1024, f"RSS grew {(after - before) / 1024:.0f} MiB"
