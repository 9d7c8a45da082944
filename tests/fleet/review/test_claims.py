"""Claims under concurrency: never two reviewers on one item; abandoned claims come back."""

from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import select

from fleet.review import queue
from fleet.review.auth import add_reviewer
from fleet.review.models import Audit, Item, Reviewer
from tests.fleet.review.conftest import item


def test_two_reviewers_never_get_the_same_item(env):
    env.add(item("i1"), item("i2"))
    alice, bob = env.reviewer("alice"), env.reviewer("bob")
    a, b = alice.claim_next(), bob.claim_next()
    assert {a["id"], b["id"]} == {"i1", "i2"}
    assert bob.claim_next()["id"] == b["id"]
    r = bob.get(f"/review/{a['id']}")
    assert r.status_code == 409 and "claimed by alice" in r.text
    r = bob.post(f"/api/items/{a['id']}/approve")
    assert r.status_code == 409 and "claimed by another reviewer" in r.json()["detail"]
    assert bob.post(f"/api/items/{a['id']}/skip").status_code == 409
    with env.db.read() as s:
        assert s.get(Item, a["id"]).status == "pending"


def test_abandoned_claims_expire_and_are_released(env):
    env.add(item("i1"))
    alice, bob = env.reviewer("alice"), env.reviewer("bob")
    assert alice.claim_next()["id"] == "i1"
    assert bob.claim_next() is None
    env.clock.advance(env.settings.claim_minutes * 60 + 1)
    assert bob.claim_next()["id"] == "i1"
    r = alice.post("/api/items/i1/approve")  # too late: bob holds it now
    assert r.status_code == 409
    with env.db.read() as s:
        release = s.scalars(select(Audit).where(Audit.action == "release")).one()
    assert release.actor == "system" and release.detail["cause"] == "expired"
    assert bob.post("/api/items/i1/approve").status_code == 200


def test_an_expired_claim_nobody_took_can_still_be_decided(env):
    env.add(item("i1"))
    alice = env.reviewer("alice")
    alice.claim_next()
    env.clock.advance(env.settings.claim_minutes * 60 + 1)
    assert alice.post("/api/items/i1/approve").status_code == 200


def test_concurrent_reviewers_over_http_each_item_decided_once(env):
    n = 24
    env.add(*(item(f"c{i:02d}") for i in range(n)))
    reviewers = [env.reviewer("alice"), env.reviewer("bob")]
    decided: list[tuple[str, str]] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(reviewers))

    def work(rv):
        start.wait()
        while True:
            it = rv.claim_next()
            if it is None:
                return
            r = rv.post(f"/api/items/{it['id']}/approve")
            with lock:
                (decided if r.status_code == 200 else errors).append((rv.username, it["id"], r.status_code))

    threads = [threading.Thread(target=work, args=(rv,)) for rv in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    ids = Counter(i for _, i, _ in decided)
    assert len(ids) == n and set(ids.values()) == {1}
    with env.db.read() as s:
        assert {i.status for i in s.scalars(select(Item))} == {"done"}
        decisions = s.scalars(select(Audit).where(Audit.action == "approve")).all()
    assert len(decisions) == n


def test_simultaneous_claims_in_the_database_never_collide(env):
    """Eight sessions claim at the same instant, again and again: every claim is a different row."""
    env.add(*(item(f"r{i:02d}") for i in range(40)))
    with env.db.read() as s:
        reviewers = s.scalars(select(Reviewer)).all()
    with env.db.write() as s:
        reviewers += [add_reviewer(s, f"extra{i}", "long enough pw", 5, env.clock()) for i in range(6)]
    got: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(reviewers))

    def claim(rv):
        for _round in range(5):
            barrier.wait()
            with env.db.write() as s:
                it = queue.claim_next(s, env.db.is_postgres, rv, queue.Filters(), env.clock(), 600)
                if it is not None:
                    it.status = "done"  # decide at once so the next round claims a new row
            with lock:
                got.append(it.id if it else None)

    threads = [threading.Thread(target=claim, args=(rv,)) for rv in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [g for g in got if g]
    assert len(claimed) == 40 and len(set(claimed)) == 40
