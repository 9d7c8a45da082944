"""Every reviewer action over the API, on SQLite and PostgreSQL: approve, reject, correct, skip, undo, amend."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from fleet.review.models import Audit, Item
from tests.fleet.review.conftest import item


def audit(env, item_id: str) -> list[Audit]:
    with env.db.read() as s:
        return list(s.scalars(select(Audit).where(Audit.item_id == item_id).order_by(Audit.id)))


def stored(env, item_id: str) -> Item:
    with env.db.read() as s:
        return s.get(Item, item_id)


def test_claim_next_takes_alerts_first_then_oldest(env):
    env.add(item("r1", "random"), item("l1", "low_confidence"))
    env.clock.advance(1)
    env.add(item("a1", "alert"), item("d1", "drift"), item("l2", "low_confidence"))
    alice = env.reviewer("alice")
    order = []
    while (it := alice.claim_next()) is not None:
        order.append(it["id"])
        assert alice.post(f"/api/items/{it['id']}/approve").status_code == 200
    assert order == ["a1", "d1", "l1", "l2", "r1"]


def test_claim_next_keeps_the_current_claim_and_honours_filters(env):
    env.add(item("s1", site="site-a"), item("s2", site="site-b", camera="cam-9"),
            item("s3", site="site-b", boxes=[{"box": [1, 1, 9, 9], "class": "truck", "score": 0.3}]))
    alice = env.reviewer("alice")
    first = alice.claim_next()
    assert alice.claim_next()["id"] == first["id"]  # one item at a time: the same again
    assert alice.claim_next(site="site-b", camera="cam-9")["id"] == "s2"
    assert stored(env, first["id"]).claimed_by is None  # switching filters gave the other one back
    assert alice.claim_next(**{"class": "truck"})["id"] == "s3"
    assert alice.claim_next(model="other@9.9.9") is None


def test_approve_keeps_the_model_boxes_and_logs_the_decision(env):
    env.add(item("i1"))
    alice = env.reviewer("alice")
    alice.claim_next()
    env.clock.advance(7)
    r = alice.post("/api/items/i1/approve")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["item"]["decision"] == "approved" and body["item"]["reviewed_by"] == "alice"
    assert body["item"]["labels"] == [{"box": [4.0, 4.0, 30.0, 40.0], "class": "person"}]
    assert body["item"]["review_seconds"] == pytest.approx(7.0)
    assert body["progress"] == {"done": 1, "quota": 5, "percent": 20}
    assert body["next"] == "/review"
    entry = audit(env, "i1")[-1]
    assert entry.action == "approve" and entry.actor == "alice"
    assert entry.detail["before"]["status"] == "pending" and entry.detail["after"]["decision"] == "approved"


def test_reject_means_nothing_to_detect(env):
    env.add(item("i1"))
    alice = env.reviewer("alice")
    alice.claim_next()
    assert alice.post("/api/items/i1/reject").status_code == 200
    it = stored(env, "i1")
    assert (it.status, it.decision, it.labels) == ("done", "rejected", [])


@pytest.mark.parametrize("boxes, expected", [
    # move and resize the box
    ([{"box": [6, 5, 34, 44], "class": "person"}], [{"box": [6.0, 5.0, 34.0, 44.0], "class": "person"}]),
    # change its class
    ([{"box": [4, 4, 30, 40], "class": "car"}], [{"box": [4.0, 4.0, 30.0, 40.0], "class": "car"}]),
    # add a missed box
    ([{"box": [4, 4, 30, 40], "class": "person"}, {"box": [40, 10, 60, 30], "class": "truck"}],
     [{"box": [4.0, 4.0, 30.0, 40.0], "class": "person"}, {"box": [40.0, 10.0, 60.0, 30.0], "class": "truck"}]),
    # delete the box
    ([], []),
], ids=["move-resize", "class", "add", "delete"])
def test_correct(env, boxes, expected):
    env.add(item("i1"))
    alice = env.reviewer("alice")
    alice.claim_next()
    r = alice.post("/api/items/i1/correct", json={"boxes": boxes})
    assert r.status_code == 200, r.text
    it = stored(env, "i1")
    assert (it.decision, it.labels) == ("corrected", expected)
    assert audit(env, "i1")[-1].action == "correct"


def test_a_correction_without_changes_counts_as_approval(env):
    env.add(item("i1"))
    alice = env.reviewer("alice")
    alice.claim_next()
    r = alice.post("/api/items/i1/correct", json={"boxes": [{"box": [4.2, 4, 30, 40], "class": "person"}]})
    assert r.json()["item"]["decision"] == "approved"


@pytest.mark.parametrize("body, field", [
    ({"boxes": [{"box": [30, 4, 4, 40], "class": "person"}]}, "boxes.0.box"),
    ({"boxes": [{"box": [4, 4, 30], "class": "person"}]}, "boxes.0.box"),
    ({"boxes": [{"box": [4, 4, 300, 40], "class": "person"}]}, "boxes.0.box"),
    ({"boxes": [{"box": [4, 4, 30, 40], "class": "unicorn"}]}, "boxes.0.class"),
    ({"boxes": [{"box": [4, 4, 30, 40]}]}, "boxes.0.class"),
    ({"boxes": [{"box": [4, 4, 30, 40], "class": "car", "colour": "red"}]}, "boxes.0.colour"),
    ({}, "boxes"),
    ("not json", None),
], ids=["inverted", "three-numbers", "outside-frame", "unknown-class", "no-class", "extra-field", "no-boxes",
        "not-json"])
def test_malformed_corrections_are_refused_and_change_nothing(env, body, field):
    env.add(item("i1"))
    alice = env.reviewer("alice")
    alice.claim_next()
    before = len(audit(env, "i1"))
    if isinstance(body, str):
        r = alice.post("/api/items/i1/correct", content=body, headers={"Content-Type": "application/json"})
    else:
        r = alice.post("/api/items/i1/correct", json=body)
    assert r.status_code == 422, r.text
    if field:
        locs = [".".join(str(p) for p in d["loc"][1:]) for d in r.json()["detail"]]
        assert any(loc.startswith(field) for loc in locs), r.json()
    it = stored(env, "i1")
    assert it.status == "pending" and it.decision is None and it.labels is None
    assert len(audit(env, "i1")) == before


@pytest.mark.parametrize("method, path", [
    ("post", "/api/items/nope/approve"), ("post", "/api/items/nope/reject"), ("post", "/api/items/nope/claim"),
    ("post", "/api/items/nope/skip"), ("get", "/api/items/nope"), ("get", "/review/nope"),
])
def test_unknown_items_are_404(env, method, path):
    alice = env.reviewer("alice")
    r = getattr(alice, method)(path) if method == "get" else alice.post(path)
    assert r.status_code == 404
    assert "nope" in r.text


def test_correcting_an_unknown_item_is_404(env):
    alice = env.reviewer("alice")
    r = alice.post("/api/items/nope/correct", json={"boxes": []})
    assert r.status_code == 404 and "not found" in r.json()["detail"]


def test_skip_gives_the_item_back_and_moves_on(env):
    env.add(item("i1"), item("i2"))
    alice, bob = env.reviewer("alice"), env.reviewer("bob")
    assert alice.claim_next()["id"] == "i1"
    assert alice.post("/api/items/i1/skip").status_code == 200
    assert alice.claim_next()["id"] == "i2"  # not the one just skipped
    assert bob.claim_next()["id"] == "i1"  # free for others at once
    assert audit(env, "i1")[-1].action == "skip"


def test_undo_restores_the_item_and_is_logged(env):
    env.add(item("i1"), item("i2"))
    alice = env.reviewer("alice")
    alice.claim_next()
    alice.post("/api/items/i1/correct", json={"boxes": [{"box": [1, 1, 10, 10], "class": "car"}]})
    assert alice.claim_next()["id"] == "i2"
    r = alice.post("/api/undo")
    assert r.status_code == 200 and r.json()["next"] == "/review/i1"
    it = stored(env, "i1")
    assert (it.status, it.decision, it.labels, it.reviewed_by) == ("pending", None, None, None)
    assert it.claimed_by is not None and stored(env, "i2").claimed_by is None  # back on i1, i2 released
    assert r.json()["progress"]["done"] == 0
    entries = audit(env, "i1")
    assert [e.action for e in entries][-2:] == ["correct", "undo"] and entries[-2].undone
    assert alice.post("/api/undo").status_code == 404  # nothing older to undo


def test_amend_through_previous_then_undo_the_amendment(env):
    env.add(item("i1"), item("i2"))
    alice, bob = env.reviewer("alice"), env.reviewer("bob")
    alice.claim_next()
    alice.post("/api/items/i1/approve")
    env.clock.advance(1)
    alice.claim_next()
    alice.post("/api/items/i2/approve")
    page = alice.get("/review/i2")
    assert '"prev": "/review/i1"' in page.text
    assert alice.post("/api/items/i1/reject").json()["next"] == "/review/i2"  # amended; next in history
    assert stored(env, "i1").decision == "rejected"
    assert bob.post("/api/items/i1/approve").status_code == 409  # only its reviewer amends it
    alice.post("/api/undo")
    assert stored(env, "i1").decision == "approved"


def test_progress_bar_and_throughput(env):
    env.add(*(item(f"i{n}") for n in range(4)))
    alice = env.reviewer("alice")
    for seconds in (4, 6, 30):
        it = alice.claim_next()
        env.clock.advance(seconds)
        alice.post(f"/api/items/{it['id']}/approve")
    page = alice.get("/review")
    assert 'aria-valuenow="3"' in page.text and "3 / 5 today" in page.text
    body = alice.get("/api/throughput").json()
    (row,) = body["reviewers"]
    assert row["reviewer"] == "alice" and row["items"] == 3 and row["median_seconds"] == 6
    assert row["items_per_hour"] == 180.0  # 3 items in 40 s of work, counted as at least a minute
    html = alice.get("/throughput").text
    assert "<td>alice</td><td>3</td>" in html
    metrics = env.metrics()
    assert 'edgecv_review_decisions_total{action="approved"} 3.0' in metrics
    assert "edgecv_review_median_seconds_per_item 6.0" in metrics
    assert 'edgecv_review_queue_items{reason="low_confidence",state="claimed"} 1.0' in metrics
    assert "edgecv_review_items_done_today 3.0" in metrics
    assert "alice" not in metrics  # no metric names a reviewer


def test_correction_rate_for_the_drift_monitor(env):
    env.add(*(item(f"i{n}", model="detector@1.2.0" if n < 4 else "detector@2.0.0") for n in range(5)))
    alice = env.reviewer("alice")
    for action in ("approve", "reject", "approve", "correct", "approve"):
        it = alice.claim_next()
        body = {"boxes": [{"box": [0, 0, 5, 5], "class": "car"}]} if action == "correct" else None
        assert alice.post(f"/api/items/{it['id']}/{action}", json=body).status_code == 200
        env.clock.advance(1)
    auth = {"Authorization": f"Bearer {env.token}"}
    r = env.device.get("/api/correction-rate", params={"model": "detector@1.2.0"}, headers=auth)
    assert r.status_code == 200
    assert r.json()["reviewed"] == 4 and r.json()["corrected"] == 2 and r.json()["rate"] == 0.5
    whole = env.device.get("/api/correction-rate", headers=auth).json()
    assert whole["reviewed"] == 5 and whole["by_decision"] == {"approved": 3, "corrected": 1, "rejected": 1}
    later = env.device.get("/api/correction-rate", params={"since": whole["until"]}, headers=auth).json()
    assert later["reviewed"] == 0 and later["rate"] is None  # polling with since counts each review once
    assert env.device.get("/api/correction-rate").status_code == 401
    assert alice.get("/api/correction-rate").json()["reviewed"] == 5  # reviewers may read it too
    assert 'edgecv_review_correction_rate 0.4' in env.metrics()


def test_queue_page_lists_filters_and_counts(env):
    env.add(*(item(f"q{n:02d}", "alert" if n % 3 == 0 else "random", site=f"site-{n % 2}") for n in range(60)))
    alice = env.reviewer("alice")
    page = alice.get("/queue")
    assert page.status_code == 200
    assert '<strong id="total">60</strong>' in page.text and "page 1 of 2" in page.text
    assert page.text.index("q00") < page.text.index("q01")  # alerts (q00, q03, ...) first
    filtered = alice.get("/queue", params={"reason": "alert", "site": "site-1"}).text
    assert '<strong id="total">10</strong>' in filtered
    assert '/review?reason=alert&amp;site=site-1&amp;filters=set' in filtered
    assert "site-0 (30)" in page.text  # filter menus with counts


def test_review_pages_when_the_queue_runs_dry(env):
    env.add(item("i1", site="site-a"))
    alice = env.reviewer("alice")
    empty = alice.get("/review", params={"site": "site-z", "filters": "set"})
    assert empty.status_code == 200 and "Nothing left to review" in empty.text and "site=site-z" in empty.text
    r = alice.get("/review", params={"filters": "clear"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/review/i1"
    alice.post("/api/items/i1/approve")
    done = alice.get("/review")
    assert "Nothing left to review" in done.text and 'href="/review/i1"' in done.text  # k: back to the last one
    listing = alice.get("/queue", params={"status": "done"}).text
    assert "approved by alice" in listing
