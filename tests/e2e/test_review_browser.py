"""The review service in real headless Chromium, driven by the keyboard (and, for drawing, the mouse).

A real server (`edgecv review serve`, uvicorn, SQLite) gets 21 flagged synthetic scenes whose
ground truth is known over HTTP, and one alert: an evidence package written by the device app's
packager (H.264 clip), queued with `edgecv review ingest-evidence`. A reviewer signs in and reviews
20 of them: approve, reject, fix a class, fix a box, delete a false box, add a missed one with keys
or draw it with the mouse and pick its class by typing, plus skip (j), undo (z), previous (k), the help
overlay (?) and Tab reaching the navigation. It prints the scripted reviewer's items per hour. The progress bar must
move with every decision; the decisions must be in the database and in the COCO export.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from click.testing import CliRunner

from app.evidence.packager import EvidenceConfig, EvidencePackager
from app.pipeline.types import Detections, Event
from fleet.cli import main
from fleet.local.procs import Service, free_port, http_ok
from fleet.retrain.synthetic.scenes import CLASSES, make_scene
from fleet.review.db import Database
from fleet.review.models import Item

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SIZE = 256
STEP = max(1, round(SIZE / 100))  # the page's move/resize step for a 256 px frame
KINDS = ["approve", "class", "box", "reject", "delete", "add", "draw"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _jpeg(img: np.ndarray) -> str:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return base64.b64encode(buf.tobytes()).decode()


def _pred(box, cls: int, score: float = 0.42) -> dict:
    return {"box": [float(v) for v in box], "class": CLASSES[cls], "score": score}


def evidence_package(root: Path, img: np.ndarray, preds: list[dict]) -> Path:
    """The device app's evidence packager around an event at t=1 s: a 2 s H.264 clip and event.json."""
    dets = Detections(np.array([p["box"] for p in preds], np.float32), np.array([p["score"] for p in preds], np.float32),
                      np.array([CLASSES.index(p["class"]) for p in preds], np.int32))
    packager = EvidencePackager(EvidenceConfig(dir=root, pre_roll_s=1, post_roll_s=1), CLASSES)
    try:
        for i in range(25):
            packager.add_frame("cam-0", i / 10, i, img, dets)
            if i == 10:
                packager.on_event(Event("ev-0", 1.0, "plant-1", "jetson-01", "cam-0", "dock", "zone_intrusion",
                                        preds[0]["class"], 0.42, tuple(preds[0]["box"]), -1, "shapes@1.0.0"))
        [package] = packager.flush_all()
    finally:
        packager.close()
    return package


def make_items(evidence: Path) -> tuple[list[dict], Path, dict[str, dict]]:
    """21 items, one evidence package, and per item what the reviewer should do and the labels that result."""
    rng = np.random.default_rng(7)
    items, plans = [], {}
    for n in range(22):
        kind = KINDS[n % len(KINDS)]
        img, boxes, classes = make_scene(rng, SIZE, max_objects=3)
        gt = [{"box": [float(v) for v in b], "class": CLASSES[c]} for b, c in zip(boxes, classes, strict=True)]
        preds = [_pred(b, c) for b, c in zip(boxes, classes, strict=True)]
        plan = {"kind": kind, "labels": gt}
        if kind == "reject":  # a textured floor with nothing on it; the model saw something anyway
            img = cv2.GaussianBlur(rng.integers(60, 200, (SIZE, SIZE, 3), dtype=np.uint8), (9, 9), 3)
            preds, plan["labels"] = [_pred([40, 40, 90, 100], 0)], []
        elif kind == "class":
            wrong = (int(classes[0]) + 1) % len(CLASSES)
            preds[0]["class"] = CLASSES[wrong]
            plan["key"] = str(int(classes[0]) + 1)
        elif kind == "box":  # the first box is off by whole steps; the reviewer moves and resizes it back
            x1, y1, x2, y2 = boxes[0]
            dx = 2 * STEP if x2 + 3 * STEP <= SIZE else -2 * STEP
            dy = -STEP if y1 - STEP >= 0 else STEP
            preds[0]["box"] = [float(x1 + dx), float(y1 + dy), float(x2 + dx + STEP), float(y2 + dy)]
            plan["keys"] = (["ArrowLeft" if dx > 0 else "ArrowRight"] * 2 + ["ArrowDown" if dy < 0 else "ArrowUp"]
                            + ["Shift+ArrowLeft"])
        elif kind == "delete":
            preds.append(_pred([2, SIZE - 30, 26, SIZE - 4], 2, 0.31))
        elif kind == "draw":  # the model missed the last object; the reviewer draws it with the mouse
            plan["draw"], preds = gt[-1], preds[:-1]
        elif kind == "add":  # the model missed the last object; the new box starts centred, a fifth of the frame
            missed, preds = gt[-1], preds[:-1]
            x1, y1, x2, y2 = missed["box"]
            start = (SIZE - round(SIZE / 5)) / 2
            plan["add"] = {"key": str(CLASSES.index(missed["class"]) + 1),
                           "dx": round((x1 - start) / STEP), "dy": round((y1 - start) / STEP),
                           "dw": round(((x2 - x1) - round(SIZE / 5)) / STEP),
                           "dh": round(((y2 - y1) - round(SIZE / 5)) / STEP)}
        if n == 0:  # an alert: the device app's evidence package (H.264 clip), queued by ingest-evidence
            alert = evidence_package(evidence, img, preds)
            plans["ev-0"] = {"kind": "approve", "labels": gt}
            continue
        body = {"id": f"scene-{n:02d}", "reason": "low_confidence", "site": "plant-1", "device": "jetson-01",
                "camera": f"cam-{n % 3}", "model": "shapes@1.0.0", "image": _jpeg(img), "boxes": preds}
        items.append(body)
        plans[body["id"]] = plan
    return items, alert, plans


@pytest.fixture
def server(tmp_path: Path):
    data, evidence = tmp_path / "data", tmp_path / "evidence"
    evidence.mkdir()
    common = ["--data-dir", str(data)]
    runner = CliRunner()
    r = runner.invoke(main, ["review", "add-user", "rita", *common, "--quota", "25"], input="keyboard only!\n")
    assert r.exit_code == 0, r.output
    token = runner.invoke(main, ["review", "add-token", "jetson-01", *common]).output.strip()
    port = free_port()

    argv = [sys.executable, "-m", "fleet.cli", "review", "serve", *common, "--port", str(port),
            "--evidence-root", str(evidence), "--classes", ",".join(CLASSES)]
    healthz = f"http://127.0.0.1:{port}/healthz"
    with Service("review", argv, port, workdir=tmp_path, ready=lambda: http_ok(healthz)) as svc:
        items, alert, plans = make_items(evidence)
        for body in items:
            r = requests.post(f"{svc.url}/api/items", json=body, headers={"Authorization": f"Bearer {token}"},
                              timeout=10)
            assert r.status_code == 201, r.text
        r = runner.invoke(main, ["review", "ingest-evidence", str(alert), "--url", svc.url, "--token", token,
                                 "--evidence-root", str(evidence)])
        assert r.exit_code == 0 and "ev-0: queued" in r.output, r.output
        yield svc, data, plans


def test_review_twenty_items_with_the_keyboard(server, tmp_path):
    from playwright.sync_api import sync_playwright

    svc, data, plans = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 950})
            page.set_default_timeout(15000)
            decided, skipped = run_session(page, svc.url, plans)
        finally:
            browser.close()
    check_database(data, plans, decided, skipped)
    check_export(data, tmp_path, plans, decided)


def press_and_wait(page, key: str) -> None:
    with page.expect_navigation(wait_until="load"):
        page.keyboard.press(key)


def progress(page) -> tuple[int, float]:
    bar = page.locator("#progress-bar")
    return int(bar.get_attribute("aria-valuenow")), bar.evaluate("e => e.getBoundingClientRect().width")


def current(page) -> dict:
    return json.loads(page.locator("#item-data").text_content())["item"]


def review(page, plan: dict, screenshot: bool) -> None:
    kind = plan["kind"]
    if kind == "approve":
        return press_and_wait(page, "a")
    if kind == "reject":
        return press_and_wait(page, "r")
    if kind == "class":
        page.keyboard.press(plan["key"])  # a digit opens correct mode and relabels the selected box
    elif kind == "box":
        page.keyboard.press("c")
        for key in plan["keys"]:
            page.keyboard.press(key)
    elif kind == "delete":
        page.keyboard.press("c")
        page.keyboard.press(",")  # from the first box back round to the last: the false one
        page.keyboard.press("x")
    elif kind == "draw":
        target = plan["draw"]
        frame = page.locator("#review-boxes").bounding_box()
        sx, sy = frame["width"] / SIZE, frame["height"] / SIZE
        x1, y1, x2, y2 = target["box"]
        page.mouse.move(frame["x"] + x1 * sx, frame["y"] + y1 * sy)
        page.mouse.down()
        page.mouse.move(frame["x"] + x2 * sx, frame["y"] + y2 * sy, steps=4)
        page.mouse.up()
        page.keyboard.press("/")  # the class picker: type to filter, Enter takes the first match
        page.keyboard.type(target["class"][:3])
        page.keyboard.press("Enter")
    elif kind == "add":
        a = plan["add"]
        page.keyboard.press("c")
        page.keyboard.press("n")
        page.keyboard.press(a["key"])
        for key, n in (("ArrowRight", a["dx"]), ("ArrowDown", a["dy"]), ("Shift+ArrowRight", a["dw"]),
                       ("Shift+ArrowDown", a["dh"])):
            back = key.replace("Right", "Left").replace("Down", "Up")
            for _ in range(abs(n)):
                page.keyboard.press(key if n > 0 else back)
    assert page.locator("body.correcting").count() == 1
    if screenshot:
        page.screenshot(path=str(ARTIFACTS / "review.png"), full_page=True)
    press_and_wait(page, "Enter")


def run_session(page, url: str, plans: dict) -> tuple[list[str], str]:
    page.goto(f"{url}/login?next=/review")
    page.keyboard.type("rita")  # the username field has focus
    page.keyboard.press("Tab")
    page.keyboard.type("keyboard only!")
    press_and_wait(page, "Enter")

    first = current(page)
    assert first["reason"] == "alert" and first["clip"]  # alerts come first, with their clip
    page.wait_for_function("document.querySelector('#clip').readyState >= 1")  # the browser decodes the H.264
    assert page.locator("#model-boxes .box").count() == len(first["predictions"])
    frame = page.locator("#frame").bounding_box()
    assert frame["width"] > 0.6 * 1400 or frame["height"] > 0.7 * 950  # one large canvas, not two small panes

    for _ in range(3):  # Tab moves the focus as on any page: it reaches the navigation
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('header') !== null")
    page.evaluate("document.activeElement.blur()")

    page.keyboard.press("?")
    assert page.locator("#help").is_visible() and "resize" in page.locator("#help").inner_text()
    page.keyboard.press("Escape")
    assert not page.locator("#help").is_visible()

    decided: list[str] = []
    widths: list[float] = [progress(page)[1]]
    started = time.perf_counter()
    skipped, undone, went_back, shot = None, False, False, False
    while len(decided) < 20:
        it = current(page)
        if skipped is None and len(decided) == 3:  # j: skip this one
            skipped = it["id"]
            press_and_wait(page, "j")
            assert current(page)["id"] != skipped
            continue
        plan = plans[it["id"]]
        review(page, plan, screenshot=not shot and plan["kind"] == "box")
        shot = shot or plan["kind"] == "box"
        decided.append(it["id"])
        done, width = progress(page)
        assert done == len(decided), "the progress bar counts every decision"
        assert width > widths[-1], "and it moves"
        widths.append(width)
        if len(decided) == 2 and not undone:  # z: undo the last decision, then make it again
            undone = True
            press_and_wait(page, "z")
            assert current(page)["id"] == decided[-1] and current(page)["status"] == "pending"
            assert progress(page)[0] == 1
            review(page, plans[decided[-1]], screenshot=False)
            assert progress(page)[0] == 2
        if len(decided) == 5 and not went_back:  # k: look at the previous decision, j: back to work
            went_back = True
            here = current(page)["id"]
            press_and_wait(page, "k")
            assert current(page)["id"] == decided[-1] and current(page)["status"] == "done"
            assert page.locator("#decision").inner_text() == current(page)["decision"]
            press_and_wait(page, "j")
            assert current(page)["id"] == here
    hours = (time.perf_counter() - started) / 3600
    kinds = [plans[i]["kind"] for i in decided]
    print(f"\nscripted keyboard reviewer: {len(decided) / hours:.0f} items/hour over {len(decided)} items "
          f"(approve {kinds.count('approve')}, reject {kinds.count('reject')}, "
          f"correct {len(kinds) - kinds.count('approve') - kinds.count('reject')}; with one skip, undo and back)")
    assert (ARTIFACTS / "review.png").stat().st_size > 10_000
    return decided, skipped


def check_database(data: Path, plans: dict, decided: list[str], skipped: str) -> None:
    db = Database(f"sqlite:///{data / 'review.db'}")
    try:
        with db.read() as s:
            for item_id in decided:
                it = s.get(Item, item_id)
                plan = plans[item_id]
                want = {"approve": "approved", "reject": "rejected"}.get(plan["kind"], "corrected")
                assert (it.status, it.decision) == ("done", want), item_id
                tol = {"add": STEP, "draw": 1.0}.get(plan["kind"], 0.01)
                assert_labels(it.labels, plan["labels"], tol, item_id)
            assert s.get(Item, skipped).status == "pending"
    finally:
        db.dispose()


def assert_labels(got: list[dict], want: list[dict], tol: float, what: str) -> None:
    key = lambda d: (d["class"], d["box"][0])  # noqa: E731
    got, want = sorted(got, key=key), sorted(want, key=key)
    assert [g["class"] for g in got] == [w["class"] for w in want], what
    for g, w in zip(got, want, strict=True):
        assert max(abs(a - b) for a, b in zip(g["box"], w["box"], strict=True)) <= tol, (what, g, w)


def check_export(data: Path, tmp_path: Path, plans: dict, decided: list[str]) -> None:
    out = tmp_path / "export"
    start = time.time()
    r = CliRunner().invoke(main, ["review", "export", "--data-dir", str(data), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert time.time() - start < 30
    coco = json.loads((out / "corrections.json").read_text())
    assert sorted(i["item_id"] for i in coco["images"]) == sorted(decided)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for img in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        labels = [{"class": names[a["category_id"]], "box": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                                            a["bbox"][1] + a["bbox"][3]]} for a in anns]
        plan = plans[img["item_id"]]
        assert_labels(labels, plan["labels"], {"add": STEP, "draw": 1.0}.get(plan["kind"], 0.02), img["item_id"])
        assert (out / "images" / img["file_name"]).is_file() and img["reviewer"] == "rita"
