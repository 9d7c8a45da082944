"""`edgecv review add-user|add-token|export`, the export feeding `edgecv retrain export`, and the migrations."""

from __future__ import annotations

import json

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import select

from fleet.cli import main
from fleet.review.auth import authenticate
from fleet.review.db import Database
from fleet.review.models import Base, DeviceToken, Reviewer
from tests.fleet.review.conftest import TestClient, item


def test_migrations_build_exactly_the_models(db_url):
    db = Database(db_url)
    try:
        db.migrate()
        db.migrate()  # idempotent: every start-up runs it
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
    finally:
        db.dispose()


def test_add_user_and_token(db_url, tmp_path):
    run = CliRunner().invoke
    base = ["review", "--help"]
    assert "serve" in run(main, base).output
    args = ["--db", db_url, "--data-dir", str(tmp_path)]
    r = run(main, ["review", "add-user", "carol", *args, "--quota", "42"], input="a good password\n")
    assert r.exit_code == 0, r.output
    again = run(main, ["review", "add-user", "carol", *args], input="another password\n")
    assert again.exit_code == 2 and "exists" in again.output
    short = run(main, ["review", "add-user", "dave", *args], input="short\n")
    assert short.exit_code == 2 and "at least 8 characters" in short.output
    bad = run(main, ["review", "add-user", "no spaces", *args], input="a good password\n")
    assert bad.exit_code == 2 and "username" in bad.output
    token = run(main, ["review", "add-token", "jetson-07", *args])
    assert token.exit_code == 0 and token.output.startswith("edgecv_")
    db = Database(db_url)
    try:
        with db.write() as s:
            carol = authenticate(s, "carol", "a good password")
            assert carol is not None and carol.daily_quota == 42
            assert authenticate(s, "carol", "another password") is None
            assert "a good password" not in s.scalar(select(Reviewer.password_hash))
            assert s.scalar(select(DeviceToken.name)) == "jetson-07"
            assert token.output.strip() not in s.scalar(select(DeviceToken.token_sha256))
    finally:
        db.dispose()


def test_export_feeds_retrain_export(env, tmp_path):
    env.add(item("a1"), item("c1"), item("r1"), item("p1"))
    alice = env.reviewer("alice")
    decisions = {"a1": ("approve", None), "c1": ("correct", {"boxes": [{"box": [2, 3, 12, 23], "class": "truck"},
                                                                         {"box": [20, 5, 40, 30], "class": "car"}]}),
                 "r1": ("reject", None)}
    for item_id, (action, body) in decisions.items():
        alice.post(f"/api/items/{item_id}/claim")
        assert alice.post(f"/api/items/{item_id}/{action}", json=body).status_code == 200
    out = tmp_path / "export"
    args = ["--db", env.settings.db_url, "--data-dir", str(env.settings.data_dir)]
    r = CliRunner().invoke(main, ["review", "export", *args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    coco = json.loads((out / "corrections.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["person", "car", "truck"]
    by_item = {img["item_id"]: img for img in coco["images"]}
    assert set(by_item) == {"a1", "c1", "r1"}  # the pending one is not exported
    assert by_item["c1"]["decision"] == "corrected" and by_item["c1"]["reviewer"] == "alice"
    anns = {k: [a for a in coco["annotations"] if a["image_id"] == v["id"]] for k, v in by_item.items()}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert [(names[a["category_id"]], a["bbox"]) for a in anns["c1"]] == [("truck", [2, 3, 10, 20]),
                                                                          ("car", [20, 5, 20, 25])]
    assert [(names[a["category_id"]], a["bbox"]) for a in anns["a1"]] == [("person", [4, 4, 26, 36])]
    assert anns["r1"] == []  # a rejected frame is a negative example
    assert (out / "images" / "c1.jpg").read_bytes() == (env.settings.data_dir / "images" / "c1.jpg").read_bytes()

    only = CliRunner().invoke(main, ["review", "export", *args, "--out", str(tmp_path / "only"),
                                     "--decision", "corrected"])
    assert only.exit_code == 0
    assert [i["item_id"] for i in json.loads((tmp_path / "only" / "corrections.json").read_text())["images"]] == ["c1"]

    dataset = tmp_path / "dataset"
    r = CliRunner().invoke(main, ["retrain", "export", "--corrections", str(out / "corrections.json"),
                                  "--images", str(out / "images"), "--out", str(dataset)])
    assert r.exit_code == 0, r.output
    provenance = json.loads((dataset / "provenance.json").read_text())
    assert {s["item_id"]: s["decision"] for s in provenance["samples"]} == {
        "a1": "approved", "c1": "corrected", "r1": "rejected"}
    assert provenance["samples"][0]["reviewer"] == "alice"


def test_export_refuses_when_images_are_gone_and_writes_nothing(env, tmp_path):
    env.add(item("g1"))
    alice = env.reviewer("alice")
    alice.post("/api/items/g1/claim")
    alice.post("/api/items/g1/approve")
    (env.settings.data_dir / "images" / "g1.jpg").unlink()
    out = tmp_path / "export"
    args = ["--db", env.settings.db_url, "--data-dir", str(env.settings.data_dir), "--out", str(out)]
    r = CliRunner().invoke(main, ["review", "export", *args])
    assert r.exit_code == 2 and "images missing for 1 item(s)" in r.output and "g1" in r.output
    assert not (out / "corrections.json").exists() and not (out / "images").exists()
    r = CliRunner().invoke(main, ["review", "export", *args, "--skip-missing"])
    assert r.exit_code == 0 and "skipped g1" in r.output
    assert json.loads((out / "corrections.json").read_text())["images"] == []


def test_healthz_is_open_metrics_and_openapi_are_not(env):
    anon = TestClient(env.app)
    health = anon.get("/healthz")
    assert health.json()["ok"] is True
    assert float(health.headers["server-timing"].split("app;dur=")[1]) > 0  # what bench/review.py reads
    assert anon.get("/metrics", follow_redirects=False).status_code == 303
    assert anon.get("/api/openapi.json").status_code == 401
    doc = env.reviewer("alice").get("/api/openapi.json").json()
    assert "IngestItem" in doc["components"]["schemas"] and "/api/items" in doc["paths"]
    body = env.metrics()
    assert "edgecv_review_request_seconds_bucket" in body
    assert all(line.split("{")[0].split(" ")[0].startswith("edgecv_review_")
               for line in body.splitlines() if line and not line.startswith("#"))


def test_the_startup_line_names_the_database(db_url):
    db = Database(db_url)
    try:
        line = db.describe()
    finally:
        db.dispose()
    if db_url.startswith("sqlite"):
        assert line == f"SQLite {db_url.removeprefix('sqlite:///')}"
    else:
        assert line.startswith("PostgreSQL postgresql") and "127.0.0.1" in line
