"""Gate evaluation core (fleet.gates.accuracy, fleet.gates.cocoeval): hand-computed figures, confusions, COCO mAP vs pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from fleet.gates.accuracy import (
    BACKGROUND,
    GatesInputError,
    confidence_histogram,
    evaluate,
    latency_gate,
    latency_passed,
    load_ground_truth,
    load_latency,
    load_predictions,
)
from fleet.gates.cocoeval import IOU_THRESHOLDS, average_precision, coco_map, match
from fleet.spec.manifest import ConfidenceHistogram, load_manifest
from tests.support.manifests import CLASSES, FIXTURES, write_manifest


def run(tmp_path: Path, gt: dict | Path, preds: list | Path, gates: dict | None = None):
    m = load_manifest(write_manifest(tmp_path, gates))
    if isinstance(gt, dict):
        (tmp_path / "gt.json").write_text(json.dumps(gt))
        gt = tmp_path / "gt.json"
    if isinstance(preds, list):
        (tmp_path / "pred.json").write_text(json.dumps(preds))
        preds = tmp_path / "pred.json"
    data = load_ground_truth(gt, m.classes)
    return evaluate(m, data, load_predictions(preds, data))


def by_name(report) -> dict:
    return {c.name: c for c in report.classes}


def test_hand_built_fixture_per_class_figures(tmp_path: Path):
    """tests/fixtures/gates at IoU 0.5, score >= 0.35 (the defaults), worked out by hand:

    image 10: person GT a1 [0,0,10,10], a2 [20,0,10,10]; car GT a3 [40,0,20,10]
      p1 person .90 on a1 -> TP person
      p2 person .80 [1,0,10,10]: IoU with a1 = 90/110 = .82 but a1 is taken -> FP person (background row)
      p3 person .20 on a2: below the score threshold -> not used, so a2 is missed -> FN person
      p4 car .95 on a3 -> TP car
    image 20: car GT a4 [0,0,20,20]; dog GT a5 [50,50,10,10]
      p5 dog .70 on a4 (a car) -> confusion (GT car, predicted dog): FP dog, FN car
      p6 dog .60 on a5 -> TP dog
      p7 car .50 on nothing -> FP car
    image 30: person GT a6 [0,0,10,10]; a person crowd region [100,0,50,50]
      p8 person .90 on a6 -> TP person
      p9 person .80 [110,10,10,10] inside the crowd region -> ignored (neither TP nor FP)
      p10 car .40 on a6, already matched by p8 -> FP car (background), no confusion

    person: TP 2, FP 1, FN 1, GT 3 -> P 2/3, R 2/3, F1 2/3
    car:    TP 1, FP 2, FN 1, GT 2 -> P 1/3, R 1/2, F1 2/5
    dog:    TP 1, FP 1, FN 0, GT 1 -> P 1/2, R 1,   F1 2/3
    bicycle: nothing -> "no data", not gated
    """
    r = run(tmp_path, FIXTURES / "ground_truth.json", FIXTURES / "predictions.json")
    c = by_name(r)
    assert [(c[n].gt, c[n].tp, c[n].fp, c[n].fn) for n in ("person", "car", "dog")] == [
        (3, 2, 1, 1), (2, 1, 2, 1), (1, 1, 1, 0)]
    assert (c["person"].precision, c["person"].recall, c["person"].f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert (c["car"].precision, c["car"].recall, c["car"].f1) == pytest.approx((1 / 3, 1 / 2, 2 / 5))
    assert (c["dog"].precision, c["dog"].recall, c["dog"].f1) == pytest.approx((1 / 2, 1.0, 2 / 3))
    assert c["bicycle"].verdict == "no data" and not c["bicycle"].gated
    # Default thresholds P .95 / R .90 / F1 .92: every labelled class fails.
    assert r.failed == ["person", "car", "dog"] and not r.passed
    assert c["dog"].failures == ["precision 0.500 < 0.950", "f1 0.667 < 0.920"]

    assert r.labels == [*CLASSES, BACKGROUND]
    assert r.confusion.tolist() == [
        # person bicycle car dog background   <- predicted; rows: ground truth
        [2, 0, 0, 0, 1],  # person: a2 missed
        [0, 0, 0, 0, 0],  # bicycle
        [0, 0, 1, 1, 0],  # car: a4 predicted as dog
        [0, 0, 0, 1, 0],  # dog
        [1, 0, 2, 0, 0],  # background: p2 (person), p7 and p10 (car)
    ]


def test_thresholds_per_class_and_evaluate_list(tmp_path: Path):
    gt, preds = FIXTURES / "ground_truth.json", FIXTURES / "predictions.json"
    lenient = {"default": {"precision": 0.3, "recall": 0.5, "f1": 0.35}}
    r = run(tmp_path, gt, preds, lenient)
    assert r.passed and r.failed == []
    strict_car = {**lenient, "classes": {"car": {"precision": 0.5, "recall": 0.5, "f1": 0.35}}}
    r = run(tmp_path, gt, preds, strict_car)
    assert r.failed == ["car"] and by_name(r)["car"].failures == ["precision 0.333 < 0.500"]
    # Gating a class with no data fails closed; classes left out are reported but not gated.
    r = run(tmp_path, gt, preds, {**lenient, "evaluate": ["person", "bicycle"]})
    c = by_name(r)
    assert r.failed == ["bicycle"] and c["bicycle"].verdict == "no data" and c["bicycle"].gated
    assert c["car"].verdict == "not gated" and c["person"].verdict == "pass"


def coco(images: list[int], anns: list[tuple], cats=("person", "car", "dog")) -> dict:
    """anns: (image_id, category name, bbox[, iscrowd])."""
    ids = {n: i + 1 for i, n in enumerate(cats)}
    return {
        "images": [{"id": i} for i in images],
        "categories": [{"id": ids[n], "name": n} for n in cats],
        "annotations": [{"id": k + 1, "image_id": a[0], "category_id": ids[a[1]], "bbox": a[2],
                         "iscrowd": a[3] if len(a) > 3 else 0} for k, a in enumerate(anns)],
    }


def pred(image: int, cls: str, bbox: list, score: float, cats=("person", "car", "dog")) -> dict:
    return {"image_id": image, "category_id": cats.index(cls) + 1, "bbox": bbox, "score": score}


def test_confusion_needs_the_iou_threshold(tmp_path: Path):
    gt = coco([1, 2], [(1, "car", [0, 0, 20, 20]), (2, "car", [0, 0, 20, 20])])
    # Image 1: a dog right on the car (IoU 1) -> confusion. Image 2: a dog shifted by 15 px
    # (IoU 5*20/(400+400-100) = 0.14) -> a background FP and a missed car instead.
    preds = [pred(1, "dog", [0, 0, 20, 20], 0.9), pred(2, "dog", [15, 0, 20, 20], 0.9)]
    r = run(tmp_path, gt, preds)
    K = len(CLASSES)
    car, dog = CLASSES.index("car"), CLASSES.index("dog")
    assert r.confusion[car, dog] == 1
    assert r.confusion[K, dog] == 1 and r.confusion[car, K] == 1
    assert r.confusion.sum() == 3
    c = by_name(r)
    assert (c["car"].tp, c["car"].fn, c["dog"].fp) == (0, 2, 2)
    # A class with ground truth and no predictions fails closed; a class predicted but not labelled is not gated.
    assert c["car"].verdict == "fail" and c["car"].precision == 0.0
    assert c["dog"].verdict == "not gated" and r.failed == ["car"]


def test_same_class_match_wins_over_confusion_and_each_gt_pairs_once(tmp_path: Path):
    gt = coco([1], [(1, "car", [0, 0, 20, 20]), (1, "dog", [0, 0, 20, 20])])
    preds = [pred(1, "dog", [0, 0, 20, 20], 0.9), pred(1, "person", [0, 0, 20, 20], 0.8),
             pred(1, "person", [1, 0, 20, 20], 0.7)]
    r = run(tmp_path, gt, preds)
    person, car, dog, K = CLASSES.index("person"), CLASSES.index("car"), CLASSES.index("dog"), len(CLASSES)
    assert r.confusion[dog, dog] == 1  # the dog found its own ground truth, not the car
    assert r.confusion[car, person] == 1  # the higher-scored person took the leftover car
    assert r.confusion[K, person] == 1  # the second person has nothing left: background FP
    assert r.confusion.sum() == 3


def test_no_ground_truth_at_all_fails_closed(tmp_path: Path):
    r = run(tmp_path, coco([1], []), [pred(1, "dog", [0, 0, 5, 5], 0.9)])
    assert not r.passed and not any(c.gated for c in r.classes)


def test_predictions_at_exact_iou_and_score_thresholds_count(tmp_path: Path):
    # IoU exactly 0.5: [0,0,20,10] vs [0,0,10,10] -> 100 / 200. Score exactly at the threshold.
    gt = coco([1], [(1, "car", [0, 0, 10, 10])])
    r = run(tmp_path, gt, [pred(1, "car", [0, 0, 20, 10], 0.35)])
    assert by_name(r)["car"].tp == 1



def test_confusion_counts_add_up_on_random_data(tmp_path: Path):
    """Every confident prediction not on a crowd region lands in exactly one column, every ordinary
    ground truth in exactly one row, and per-class TP/FP/FN are read off the same matrix."""
    gt, preds = random_coco(np.random.default_rng(5), n_images=30, n_classes=3, crowd=0.1)
    gt["categories"] = [{**c, "name": n} for c, n in zip(gt["categories"], ["person", "car", "dog"], strict=True)]
    r = run(tmp_path, gt, preds)
    K = len(CLASSES)
    ordinary = [a for a in gt["annotations"] if not a["iscrowd"]]
    cat_id = {c["name"]: c["id"] for c in gt["categories"]}
    assert r.confusion[:K].sum() == len(ordinary)
    confident = sum(p["score"] >= 0.35 for p in preds)
    assert 0 < r.confusion[:, :K].sum() <= confident  # the difference: predictions ignored on crowd regions
    assert r.confusion[:K, :K].sum() - np.trace(r.confusion) > 0  # some confusions happened
    for k, c in enumerate(r.classes):
        assert (c.tp, c.tp + c.fp, c.tp + c.fn) == (r.confusion[k, k], r.confusion[:, k].sum(), r.confusion[k].sum())
        assert c.gt == sum(a["category_id"] == cat_id.get(c.name) for a in ordinary)

# --- COCO mAP: equal to pycocotools ------------------------------------------------------------


def random_coco(rng: np.random.Generator, n_images: int, n_classes: int, crowd: float = 0.0):
    images = [{"id": int(i)} for i in rng.choice(10_000, n_images, replace=False)]
    cats = [{"id": int(k) * 7 + 2, "name": f"c{k}"} for k in range(n_classes)]
    anns, preds = [], []
    for img in images:
        for _ in range(int(rng.integers(0, 12))):
            xy, wh = rng.uniform(0, 200, 2), rng.uniform(4, 60, 2)
            cat = cats[int(rng.integers(n_classes))]["id"]
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat,
                         "bbox": [*xy.tolist(), *wh.tolist()], "area": float(wh.prod()),
                         "iscrowd": int(rng.random() < crowd)})
            for _ in range(int(rng.integers(0, 3))):  # 0-2 noisy detections per object, sometimes mislabelled
                box = np.r_[xy + rng.normal(0, 4, 2), np.maximum(wh + rng.normal(0, 4, 2), 1)]
                c = cat if rng.random() < 0.85 else cats[int(rng.integers(n_classes))]["id"]
                # Scores on a coarse grid: ties exercise the stable ordering.
                preds.append({"image_id": img["id"], "category_id": c, "bbox": box.tolist(),
                              "score": float(rng.integers(1, 20)) / 20})
        for _ in range(int(rng.integers(0, 5))):  # false positives
            preds.append({"image_id": img["id"], "category_id": cats[int(rng.integers(n_classes))]["id"],
                          "bbox": [*rng.uniform(0, 200, 2).tolist(), *rng.uniform(4, 60, 2).tolist()],
                          "score": float(rng.random())})
    # One image with more than maxDets=100 detections of one class: only the best 100 count.
    crowded = images[0]["id"]
    for j in range(130):
        anns_box = [float(j % 13) * 15, float(j // 13) * 15, 12.0, 12.0]
        if j % 2 == 0:
            anns.append({"id": len(anns) + 1, "image_id": crowded, "category_id": cats[0]["id"],
                         "bbox": anns_box, "area": 144.0, "iscrowd": 0})
        preds.append({"image_id": crowded, "category_id": cats[0]["id"], "bbox": anns_box,
                      "score": float(rng.random())})
    return {"images": images, "annotations": anns, "categories": cats}, preds


def pycoco_precision(gt: dict, preds: list) -> tuple[np.ndarray, float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = json.loads(json.dumps(gt))
        c.createIndex()
        ev = COCOeval(c, c.loadRes(json.loads(json.dumps(preds))), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.eval["precision"][:, :, :, 0, 2], float(ev.stats[1]), float(ev.stats[0])


@pytest.mark.parametrize("seed,crowd", [(0, 0.0), (1, 0.0), (2, 0.15)])
def test_map_equals_pycocotools(tmp_path: Path, seed: int, crowd: float):
    gt, preds = random_coco(np.random.default_rng(seed), n_images=40, n_classes=5, crowd=crowd)
    names = [c["name"] for c in gt["categories"]]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    data = load_ground_truth(tmp_path / "gt.json", names)
    dt = load_predictions(tmp_path / "pred.json", data)
    ref_precision, ref50, ref50_95 = pycoco_precision(gt, preds)

    m = match(data.gt, dt, len(names), IOU_THRESHOLDS, max_det=100)
    precision = average_precision(data.gt, dt, m, len(names))  # (T, R, K), categories in id order = names
    np.testing.assert_allclose(precision, ref_precision, rtol=0, atol=1e-12)
    map50, map50_95 = coco_map(data.gt, dt, len(names))
    assert map50 == pytest.approx(ref50, abs=1e-9) and map50_95 == pytest.approx(ref50_95, abs=1e-9)
    assert 0.1 < map50 < 1  # the data is neither trivial nor hopeless


def test_map_reported_by_evaluate_matches_pycocotools_on_the_fixture(tmp_path: Path):
    r = run(tmp_path, FIXTURES / "ground_truth.json", FIXTURES / "predictions.json")
    gt = json.loads((FIXTURES / "ground_truth.json").read_text())
    _, ref50, ref50_95 = pycoco_precision(gt, json.loads((FIXTURES / "predictions.json").read_text()))
    assert (r.map50, r.map50_95) == pytest.approx((ref50, ref50_95), abs=1e-9)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,message", [
    ('{"images": [], "annotations": [],\n "categories": [}', "gt.json:2:17: malformed JSON"),
    ('[]', "ground truth: (top level): Input should be a valid dictionary"),
    ('{"images": [{"id": "1"}], "annotations": [], "categories": []}', "images[0].id: Input should be a valid integer"),
    ('{"images": [{"id": 1}], "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 2]}], '
     '"categories": [{"id": 1, "name": "car"}]}', "annotations[0].bbox: bbox is [x, y, w, h] with w, h >= 0, got [0.0, 0.0, -1.0, 2.0]"),
    ('{"images": [{"id": 1}], "annotations": [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 2]}], '
     '"categories": [{"id": 1, "name": "car"}]}', "annotations[0].image_id: unknown image_id 2"),
    ('{"images": [{"id": 1}], "annotations": [{"image_id": 1, "category_id": 9, "bbox": [0, 0, 1, 2]}], '
     '"categories": [{"id": 1, "name": "car"}]}', "annotations[0].category_id: unknown category_id 9"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "cat"}]}',
     "categories[1]: category 2 'cat' is not a class of the model"),
    ('{"images": [{"id": 1}, {"id": 1}], "annotations": [], "categories": []}', "duplicate image id 1"),
])
def test_bad_ground_truth(tmp_path: Path, text: str, message: str):
    (tmp_path / "gt.json").write_text(text)
    with pytest.raises(GatesInputError) as err:
        load_ground_truth(tmp_path / "gt.json", CLASSES)
    assert message in str(err.value) and str(tmp_path / "gt.json") in str(err.value)


@pytest.mark.parametrize("preds,message", [
    ([pred(7, "car", [0, 0, 1, 1], 0.5)], "[0].image_id: unknown image_id 7"),
    ([pred(1, "car", [0, 0, 1, 1], 0.5), {"image_id": 1, "category_id": 42, "bbox": [0, 0, 1, 1], "score": 0.5}],
     "[1].category_id: unknown category_id 42"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.5}], "[0].score: Input should be less"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}], "[0].bbox: List should have at least 4"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}], "[0].score: Field required"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": float("nan")}],
     "[0].score: Input should be a finite number"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, -1], "score": 0.5}], "pred.json: [0].bbox: bbox is [x, y"),
    ({"image_id": 1}, "predictions: (top level): Input should be a valid list"),
])
def test_bad_predictions(tmp_path: Path, preds, message: str):
    (tmp_path / "gt.json").write_text(json.dumps(coco([1], [(1, "car", [0, 0, 5, 5])])))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    data = load_ground_truth(tmp_path / "gt.json", CLASSES)
    with pytest.raises(GatesInputError) as err:
        load_predictions(tmp_path / "pred.json", data)
    assert message in str(err.value), str(err.value)


def test_missing_file(tmp_path: Path):
    with pytest.raises(GatesInputError, match="nope.json: ground truth file not found"):
        load_ground_truth(tmp_path / "nope.json", CLASSES)


# --- reference histogram and latency ------------------------------------------------------------


def test_confidence_histogram_is_a_manifest_reference():
    scores = np.array([0.0, 0.04, 0.05, 0.35, 0.5, 0.99, 1.0])
    hist = confidence_histogram(scores)
    ConfidenceHistogram.model_validate(hist)
    assert hist["edges"][0] == 0.0 and hist["edges"][-1] == 1.0 and len(hist["counts"]) == 20
    expected = [0] * 20
    for b in (0, 0, 1, 7, 10, 19, 19):  # 1.0 falls in the last (closed) bin
        expected[b] += 1
    assert hist["counts"] == expected
    assert confidence_histogram([0.2, 0.7], [0.0, 0.5, 1.0])["counts"] == [1, 1]


def test_latency_gate(tmp_path: Path):
    m = load_manifest(write_manifest(tmp_path, budget={"inference": 60}))
    ok = latency_gate(m, load_latency(FIXTURES / "latency_ok.json"))
    verdicts = {s.stage: s.verdict for s in ok}
    # inference p95 61.2 ms is over this manifest's 60 ms budget; batch_wait has no budget: information only.
    assert verdicts == {"capture": "pass", "preprocess": "pass", "inference": "over budget", "postprocess": "pass",
                        "dispatch": "pass", "total": "pass", "batch_wait": "info"}
    assert not latency_passed(ok)
    default = load_manifest(write_manifest(tmp_path))
    assert latency_passed(latency_gate(default, load_latency(FIXTURES / "latency_ok.json")))
    over = {s.stage: s for s in latency_gate(default, load_latency(FIXTURES / "latency_over.json"))}
    assert over["inference"].verdict == "over budget" and over["inference"].p95_ms == 150.0
    assert over["dispatch"].verdict == "missing" and over["dispatch"].p95_ms is None
    assert over["capture"].verdict == "pass"


@pytest.mark.parametrize("doc,message", [
    ({"stage": {}}, "stages: Field required"),
    ({"stages": {"inference": {"p50_ms": 1}}}, "stages.inference.p95_ms: Field required"),
    ({"stages": {"inference": {"p95_ms": "fast"}}}, "stages.inference.p95_ms: Input should be a valid number"),
])
def test_bad_latency_file(tmp_path: Path, doc: dict, message: str):
    (tmp_path / "lat.json").write_text(json.dumps(doc))
    with pytest.raises(GatesInputError) as err:
        load_latency(tmp_path / "lat.json")
    assert message in str(err.value)
