"""Sign-in, sessions and CSRF: every refusal is a clear 401/403 and changes nothing."""

from __future__ import annotations

import re

from sqlalchemy import select

from fleet.review.auth import add_reviewer
from fleet.review.models import Audit, Item
from tests.fleet.review.conftest import TestClient, item


def csrf_of(client, path="/login") -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get(path).text).group(1)


def test_pages_need_sign_in_and_the_api_says_401(env):
    anon = TestClient(env.app)
    r = anon.get("/review/x", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/review/x"
    assert anon.get("/queue", follow_redirects=False).status_code == 303
    assert anon.post("/api/claim-next").status_code in (401, 403)
    assert anon.get("/api/progress").status_code == 401


def test_wrong_password_is_refused_and_audited(env):
    c = TestClient(env.app)
    token = csrf_of(c)
    r = c.post("/login", data={"username": "alice", "password": "nope", "csrf_token": token})
    assert r.status_code == 401 and "Wrong username or password" in r.text
    r = c.post("/login", data={"username": "mallory", "password": "whatever1", "csrf_token": token})
    assert r.status_code == 401
    assert c.get("/api/progress").status_code == 401
    with env.db.read() as s:
        actions = [(a.actor, a.action) for a in s.scalars(select(Audit).order_by(Audit.id))]
    assert actions == [("alice", "login_failed"), ("mallory", "login_failed")]


def test_login_needs_its_csrf_token(env):
    c = TestClient(env.app)
    csrf_of(c)
    r = c.post("/login", data={"username": "alice", "password": "correct horse battery", "csrf_token": "forged"})
    assert r.status_code == 403
    assert c.get("/api/progress").status_code == 401


def test_login_redirects_only_to_local_paths(env):
    c = TestClient(env.app)
    r = c.post("/login", data={"username": "alice", "password": "correct horse battery", "csrf_token": csrf_of(c),
                               "next": "//evil.example/x"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/queue"


def test_actions_need_the_csrf_header(env):
    env.add(item("i1"))
    alice = env.reviewer("alice")
    alice.claim_next()
    bob = env.reviewer("bob")
    for headers in ({"X-CSRF-Token": ""}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": bob.csrf}):
        r = alice.http.post("/api/items/i1/approve", headers=headers)
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    assert alice.http.post("/api/undo").status_code == 403
    with env.db.read() as s:
        assert s.get(Item, "i1").status == "pending"
    assert alice.post("/api/items/i1/approve").status_code == 200


def test_logout_needs_csrf_releases_claims_and_ends_the_session(env):
    env.add(item("i1"))
    alice = env.reviewer("alice")
    alice.claim_next()
    assert alice.http.post("/logout", data={"csrf_token": "forged"}).status_code == 403
    r = alice.http.post("/logout", data={"csrf_token": alice.csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert alice.get("/api/progress").status_code == 401
    with env.db.read() as s:
        assert s.get(Item, "i1").claimed_by is None


def test_a_password_change_ends_existing_sessions(env):
    alice = env.reviewer("alice")
    assert alice.get("/api/progress").status_code == 200
    with env.db.write() as s:
        add_reviewer(s, "alice", "a brand new password", 5, env.clock(), update=True)
    assert alice.get("/api/progress").status_code == 401


def test_tampered_session_cookie_is_ignored(env):
    alice = env.reviewer("alice")
    cookie = alice.http.cookies.get("edgecv_review")
    forged = TestClient(env.app)
    forged.cookies.set("edgecv_review", cookie[:-4] + ("AAAA" if not cookie.endswith("AAAA") else "BBBB"))
    assert forged.get("/api/progress").status_code == 401
