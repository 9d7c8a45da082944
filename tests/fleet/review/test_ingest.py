"""POST /api/items: device tokens, idempotency by item id, images from the upload or the evidence store."""

from __future__ import annotations

import base64

import pytest
from sqlalchemy import func, select

from fleet.review.models import Audit, Item, ItemClass
from tests.fleet.review.conftest import Env, TestClient, item, jpeg, mp4


def count(env, model=Item) -> int:
    with env.db.read() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_ingest_needs_a_valid_device_token(env):
    body = item("i1")
    assert env.device.post("/api/items", json=body).status_code == 401
    r = env.device.post("/api/items", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    alice = env.reviewer("alice")  # a reviewer's session is not a device token
    assert alice.post("/api/items", json=body).status_code == 401
    assert count(env) == 0


def test_ingest_is_idempotent_by_item_id(env):
    first = env.ingest(item("i1", boxes=[{"box": [1, 2, 20, 30], "class": "car", "score": 0.45},
                                         {"box": [30, 2, 50, 30], "class": "person", "score": 0.2}]))
    assert first.status_code == 201 and first.json() == {"id": "i1", "created": True, "status": "pending"}
    image = (env.settings.data_dir / "images" / "i1.jpg").read_bytes()
    same = item("i1", boxes=[{"box": [1, 2, 20, 30], "class": "car", "score": 0.45},
                             {"box": [30, 2, 50, 30], "class": "person", "score": 0.2}])
    again = env.ingest(same)  # a retry after a lost answer
    assert again.status_code == 200 and again.json()["created"] is False
    other = env.ingest(item("i1", reason="alert", image=base64.b64encode(jpeg(seed=9)).decode()))
    assert other.status_code == 409 and "different content" in other.text  # never a silent drop
    assert count(env) == 1 and count(env, ItemClass) == 2
    with env.db.read() as s:
        it = s.get(Item, "i1")
        assert it.reason == "low_confidence" and it.classes == ["car", "person"]  # the first one stands
        assert (it.width, it.height) == (64, 48)
        assert s.scalar(select(func.count()).select_from(Audit).where(Audit.action == "ingest")) == 1
    assert (env.settings.data_dir / "images" / "i1.jpg").read_bytes() == image
    metrics = env.metrics()
    assert 'edgecv_review_ingested_total{reason="low_confidence"} 1.0' in metrics
    assert "edgecv_review_ingest_duplicates_total 1.0" in metrics


@pytest.mark.parametrize("over, field, message", [
    ({"reason": "bored"}, "reason", "Input should be"),
    ({"id": "../etc/passwd"}, "id", "should match pattern"),
    ({"model": "detector"}, "model", "should match pattern"),
    ({"site": ""}, "site", "at least 1 character"),
    ({"image": "%%% not base64"}, "image", "not valid base64"),
    ({"image": base64.b64encode(b"GIF89a....").decode()}, "image", "expected a JPEG"),
    ({"image": base64.b64encode(b"\xff\xd8\xff\xe0garbage").decode()}, "image", "not a decodable image"),
    ({"image_path": "frames/x.jpg"}, "", "exactly one of image, image_path, image_url"),
    ({"image": None}, "", "exactly one of image, image_path, image_url"),
    ({"boxes": [{"box": [1, 1, 500, 20], "class": "car", "score": 0.3}]}, "boxes.0.box", "outside the 64x48 frame"),
    ({"boxes": [{"box": [1, 1, 20, 20], "class": "car", "score": 1.7}]}, "boxes.0.score", "less than or equal"),
    ({"width": 640, "height": 480}, "width", "differ from the image's 64x48"),
    ({"colour": "red"}, "colour", "Extra inputs"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_items_are_refused_naming_the_field_and_nothing_is_stored(env, over, field, message):
    r = env.ingest(item("bad", **over))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(".".join(str(p) for p in d["loc"][1:]) == field and message in d["msg"] for d in detail), detail
    assert count(env) == 0 and count(env, Audit) == 0
    images = env.settings.data_dir / "images"
    assert not images.exists() or not any(images.iterdir())


def test_items_can_point_into_the_evidence_store(env):
    pkg = env.evidence / "site-a" / "ev-1"
    pkg.mkdir(parents=True)
    (pkg / "frame.jpg").write_bytes(jpeg(80, 60))
    mp4(pkg / "clip.mp4")
    body = item("ev-1", "alert", image=None, image_path="site-a/ev-1/frame.jpg", clip_path="site-a/ev-1/clip.mp4",
                event_id="ev-1")
    assert env.ingest(body).status_code == 201
    alice = env.reviewer("alice")
    page = alice.get("/review/ev-1")
    assert '<video id="clip"' in page.text and 'src="/items/ev-1/clip"' in page.text
    assert alice.get("/items/ev-1/image").content == (pkg / "frame.jpg").read_bytes()
    part = alice.get("/items/ev-1/clip", headers={"Range": "bytes=0-99"})  # browsers seek with ranges
    assert part.status_code == 206 and len(part.content) == 100
    assert part.headers["content-type"] == "video/mp4"
    assert env.device.get("/items/ev-1/image", follow_redirects=False).status_code in (303, 401)  # not public


@pytest.mark.parametrize("over, field", [
    ({"image_path": "../outside.jpg"}, "image_path"),
    ({"image_path": "missing.jpg"}, "image_path"),
    ({"clip_path": "nope.mp4"}, "clip_path"),
])
def test_evidence_paths_must_exist_inside_the_store(env, over, field, tmp_path):
    (tmp_path / "outside.jpg").write_bytes(jpeg())
    body = item("e1", **({"image": None, "image_path": over.get("image_path")} if "image_path" in over else {}))
    if "clip_path" in over:
        body["clip_path"] = over["clip_path"]
    r = env.ingest(body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", field]
    assert count(env) == 0


def test_items_by_url_need_their_size_and_an_allowed_store(db_url, tmp_path):
    env = Env(db_url, tmp_path, image_url_allow=["https://evidence.example.com/site-a/"])
    try:
        url = "https://evidence.example.com/site-a/frame.jpg"
        r = env.ingest(item("u1", image=None, image_url=url))
        assert r.status_code == 422 and "width and height are required" in r.text
        for elsewhere in ("http://169.254.169.254/latest/meta-data/", "https://evidence.example.com/site-b/x.jpg",
                          "https://evidence.example.com/site-a/../site-b/x.jpg"):
            r = env.ingest(item("u1", image=None, image_url=elsewhere, width=64, height=48))
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image_url"], elsewhere
        ok = env.ingest(item("u1", image=None, image_url=url, width=64, height=48))
        assert ok.status_code == 201
        alice = env.reviewer("alice")
        r = alice.get("/items/u1/image", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == url
        assert "https://evidence.example.com:443" in r.headers["content-security-policy"]
    finally:
        env.db.dispose()


def test_device_text_is_escaped_in_pages(env):
    env.add(item("x1", site="<script>alert(1)</script>", camera="cam\"'><img src=x>"))
    alice = env.reviewer("alice")
    for page in (alice.get("/queue").text, alice.get("/review/x1").text):
        assert "<script>alert(1)" not in page and "<img src=x>" not in page
        assert "&lt;script&gt;alert(1)" in page or "\\u003cscript\\u003e" in page


def test_the_queue_shows_thumbnails(env):
    import cv2
    import numpy as np

    env.add(item("t1", image=base64.b64encode(jpeg(640, 480)).decode()))
    alice = env.reviewer("alice")
    assert 'src="/items/t1/thumb"' in alice.get("/queue").text
    r = alice.get("/items/t1/thumb")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
    assert TestClient(env.app).get("/items/t1/thumb", follow_redirects=False).status_code == 303  # not public
