"""Gate evaluation speed: our vectorised COCO mAP against pycocotools on the same data, same run.

    .venv/bin/python bench/gates.py [--images 5000] [--boxes 20]

Synthetic held-out set (seeded): ~20 ground-truth boxes per image over 10 classes, a few crowd
regions, and noisy predictions (jittered true boxes, class swaps, misses, false positives).
pycocotools runs its index, loadRes, evaluate() + accumulate() + summarize(); ours computes the same
two figures (mAP@0.5, mAP@[.5:.95]) with fleet.gates.cocoeval, timed alone and with the input validation
(pydantic) and conversion that `edgecv gates` does. The figures must be identical.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time

import numpy as np

from fleet.gates.accuracy import dataset_from_coco, predictions_from_results
from fleet.gates.cocoeval import coco_map


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


def ours(gt: dict, preds: list[dict]) -> tuple[tuple[float, float], float, float]:
    """(mAP@0.5, mAP@[.5:.95]), seconds for validating + converting the inputs, seconds for the evaluation."""
    t = time.perf_counter()
    data = dataset_from_coco(gt, [c["name"] for c in gt["categories"]])
    dt = predictions_from_results(preds, data)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    result = coco_map(data.gt, dt, len(data.class_names))
    return result, t_load, time.perf_counter() - t


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
    gt_copy, preds_copy = copy.deepcopy((gt, preds))  # pycocotools adds keys to the dicts it is given
    t = time.perf_counter()
    ref = pycoco(gt_copy, preds_copy)
    t_ref = time.perf_counter() - t
    got, t_load, t_eval = ours(gt, preds)
    print(f"pycocotools  mAP@0.5 {ref[0]:.10f}  mAP@[.5:.95] {ref[1]:.10f}  {t_ref:7.2f} s (index, loadRes, "
          "evaluate, accumulate, summarize)")
    print(f"edgecv       mAP@0.5 {got[0]:.10f}  mAP@[.5:.95] {got[1]:.10f}  {t_eval:7.2f} s evaluation "
          f"+ {t_load:.2f} s validating the inputs")
    same = abs(ref[0] - got[0]) < 1e-12 and abs(ref[1] - got[1]) < 1e-12
    print(f"identical figures: {same}   speed-up: {t_ref / t_eval:.1f}x evaluation (goal >= 5x), "
          f"{t_ref / (t_eval + t_load):.1f}x including input validation")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
