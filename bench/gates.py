"""Gate evaluation speed: our vectorised COCO mAP against pycocotools on the same data, same run.

    .venv/bin/python bench/gates.py [--images 5000] [--boxes 20]

Synthetic held-out set (seeded): ~20 ground-truth boxes per image over 10 classes, a few crowd
regions, and noisy predictions (jittered true boxes, class swaps, misses, false positives).
pycocotools runs evaluate() + accumulate() + summarize(); ours computes the same two figures
(mAP@0.5, mAP@[.5:.95]) with fleet.cocoeval. The figures must be identical.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np

from fleet.cocoeval import coco_map
from fleet.gates import Dataset, _boxes


def synthetic(n_images: int, boxes_per_image: int, n_classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 640, "height": 480} for i in range(n_images)]
    anns, preds = [], []
    for img in images:
        n = max(1, int(rng.poisson(boxes_per_image)))
        xy = rng.uniform(0, 560, (n, 2))
        wh = rng.uniform(8, 120, (n, 2))
        cls = rng.integers(0, n_classes, n)
        crowd = rng.random(n) < 0.01
        for j in range(n):
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": int(cls[j]) + 1,
                         "bbox": [*map(float, xy[j]), *map(float, wh[j])], "area": float(wh[j].prod()),
                         "iscrowd": int(crowd[j])})
            if rng.random() < 0.9:  # found, with jitter and sometimes the wrong class
                jit = rng.normal(0, 0.08, 4) * np.r_[wh[j], wh[j]]
                box = np.r_[xy[j] + jit[:2], np.maximum(wh[j] + jit[2:], 1.0)]
                c = int(cls[j]) if rng.random() > 0.05 else int(rng.integers(0, n_classes))
                preds.append({"image_id": img["id"], "category_id": c + 1, "bbox": [float(v) for v in box],
                              "score": float(np.round(rng.beta(5, 2), 3))})
        for _ in range(int(rng.poisson(boxes_per_image * 0.3))):  # false positives
            preds.append({"image_id": img["id"], "category_id": int(rng.integers(0, n_classes)) + 1,
                          "bbox": [*map(float, rng.uniform(0, 560, 2)), *map(float, rng.uniform(8, 120, 2))],
                          "score": float(np.round(rng.beta(2, 5), 3))})
    cats = [{"id": k + 1, "name": f"class{k}"} for k in range(n_classes)]
    return {"images": images, "annotations": anns, "categories": cats}, preds


def ours(gt: dict, preds: list[dict]) -> tuple[float, float]:
    ids = sorted(i["id"] for i in gt["images"])
    pos = {v: i for i, v in enumerate(ids)}
    cats = {c["id"]: k for k, c in enumerate(sorted(gt["categories"], key=lambda c: c["id"]))}
    data = Dataset(ids, [c["name"] for c in gt["categories"]], cats,
                   _boxes([(pos[a["image_id"]], cats[a["category_id"]], a["bbox"], bool(a["iscrowd"]))
                           for a in gt["annotations"]]))
    dt = _boxes([(pos[p["image_id"]], cats[p["category_id"]], p["bbox"], False) for p in preds],
                [p["score"] for p in preds])
    return coco_map(data.gt, dt, len(cats))


def pycoco(gt: dict, preds: list[dict]) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(preds), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--boxes", type=int, default=20)
    args = ap.parse_args()
    gt, preds = synthetic(args.images, args.boxes)
    print(f"{args.images} images, {len(gt['annotations'])} ground-truth boxes, {len(preds)} predictions")
    t = time.perf_counter()
    ref = pycoco(gt, preds)
    t_ref = time.perf_counter() - t
    t = time.perf_counter()
    got = ours(gt, preds)
    t_ours = time.perf_counter() - t
    print(f"pycocotools  mAP@0.5 {ref[0]:.10f}  mAP@[.5:.95] {ref[1]:.10f}  {t_ref:7.2f} s")
    print(f"edgecv       mAP@0.5 {got[0]:.10f}  mAP@[.5:.95] {got[1]:.10f}  {t_ours:7.2f} s")
    same = abs(ref[0] - got[0]) < 1e-12 and abs(ref[1] - got[1]) < 1e-12
    print(f"identical figures: {same}   speed-up: {t_ref / t_ours:.1f}x (goal >= 5x)")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
