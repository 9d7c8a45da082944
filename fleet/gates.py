"""Accuracy and latency gates: what may ship. Fail closed.

Accuracy: predictions (COCO results) against a held-out set (COCO dataset). Per class, the
predictions at or above the manifest's score threshold are matched greedily by descending score
to ground truth of the same image and class at IoU >= the manifest's IoU threshold (each ground
truth used once; a prediction on a crowd region is ignored, a crowd region is never missed):
TP / FP / FN, precision, recall, F1 against the per-class thresholds.

Confusion matrix: rows are the ground-truth class, columns the predicted class, each with a
`background` entry. After same-class matching, a leftover prediction that overlaps a leftover
ground truth of another class at the IoU threshold is a confusion (row = its true class,
column = the predicted class) instead of a background FP plus a background FN. Per-class
precision and recall count those confusions as the errors they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fleet.cocoeval import Boxes, coco_map, iou_xywh, match
from fleet.manifest import STAGES, ModelManifest

BACKGROUND = "background"


class GatesInputError(ValueError):
    """Bad input (exit status 2): malformed JSON, unknown ids, classes the model does not have."""


@dataclass
class Dataset:
    image_ids: list[int]
    class_names: list[str]  # the manifest's classes
    category_to_class: dict[int, int]  # COCO category id -> manifest class index
    gt: Boxes


def _load_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise GatesInputError(f"{path}: {what} file not found") from exc
    except json.JSONDecodeError as exc:
        raise GatesInputError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON in {what}: {exc.msg}") from exc


def _bbox(obj: dict, where: str) -> list[float]:
    b = obj.get("bbox")
    if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, int | float) for v in b)) or b[2] < 0 or b[3] < 0:
        raise GatesInputError(f"{where}: bbox must be [x, y, w, h] numbers with w, h >= 0, got {b!r}")
    return b


def load_ground_truth(path: Path, classes: list[str]) -> Dataset:
    coco = _load_json(path, "ground truth")
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")):
        raise GatesInputError(f"{path}: ground truth must be a COCO dataset with images, annotations, categories lists")
    index = {name: i for i, name in enumerate(classes)}
    cat_to_class = {}
    for c in coco["categories"]:
        if c.get("name") not in index:
            raise GatesInputError(f"{path}: category {c.get('id')} '{c.get('name')}' is not a class of the model")
        cat_to_class[c["id"]] = index[c["name"]]
    image_ids = sorted(img["id"] for img in coco["images"])
    pos = {img_id: i for i, img_id in enumerate(image_ids)}
    rows = []
    for i, a in enumerate(coco["annotations"]):
        where = f"{path}: annotations[{i}]"
        if a.get("image_id") not in pos:
            raise GatesInputError(f"{where}: unknown image_id {a.get('image_id')!r}")
        if a.get("category_id") not in cat_to_class:
            raise GatesInputError(f"{where}: unknown category_id {a.get('category_id')!r}")
        rows.append((pos[a["image_id"]], cat_to_class[a["category_id"]], _bbox(a, where), bool(a.get("iscrowd", 0))))
    return Dataset(image_ids, classes, cat_to_class, _boxes(rows))


def _boxes(rows: list[tuple], scores: list[float] | None = None) -> Boxes:
    n = len(rows)
    return Boxes(
        image=np.array([r[0] for r in rows], np.int64),
        cls=np.array([r[1] for r in rows], np.int64),
        box=np.array([r[2] for r in rows], np.float64).reshape(n, 4),
        score=np.array(scores if scores is not None else [0.0] * n, np.float64),
        crowd=np.array([r[3] for r in rows], bool),
    )


def load_predictions(path: Path, data: Dataset) -> Boxes:
    results = _load_json(path, "predictions")
    if not isinstance(results, list):
        raise GatesInputError(f"{path}: predictions must be a COCO results list")
    pos = {img_id: i for i, img_id in enumerate(data.image_ids)}
    rows, scores = [], []
    for i, p in enumerate(results):
        where = f"{path}: [{i}]"
        if not isinstance(p, dict) or p.get("image_id") not in pos:
            raise GatesInputError(f"{where}: unknown image_id {p.get('image_id') if isinstance(p, dict) else p!r}")
        if p.get("category_id") not in data.category_to_class:
            raise GatesInputError(f"{where}: unknown category_id {p.get('category_id')!r}")
        score = p.get("score")
        if not isinstance(score, int | float) or not 0 <= score <= 1:
            raise GatesInputError(f"{where}: score must be a number in [0, 1], got {score!r}")
        rows.append((pos[p["image_id"]], data.category_to_class[p["category_id"]], _bbox(p, where), False))
        scores.append(float(score))
    return _boxes(rows, scores)


@dataclass
class ClassResult:
    name: str
    gt: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    thresholds: dict[str, float]
    gated: bool
    verdict: str  # pass | fail | no data | not gated
    failures: list[str] = field(default_factory=list)


@dataclass
class AccuracyReport:
    classes: list[ClassResult]
    confusion: np.ndarray  # (K+1, K+1): rows ground truth, columns predicted; last = background
    labels: list[str]
    iou_threshold: float
    score_threshold: float
    map50: float
    map50_95: float

    @property
    def passed(self) -> bool:
        gated = [c for c in self.classes if c.gated]
        return bool(gated) and all(c.verdict == "pass" for c in gated)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.classes if c.gated and c.verdict != "pass"]


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def evaluate(manifest: ModelManifest, data: Dataset, preds: Boxes) -> AccuracyReport:
    gates = manifest.gates
    K = len(data.class_names)
    map50, map50_95 = coco_map(data.gt, preds, K)

    confident = preds.score >= gates.score_threshold
    dt = Boxes(preds.image[confident], preds.cls[confident], preds.box[confident], preds.score[confident],
               preds.crowd[confident])
    m = match(data.gt, dt, K, np.array([gates.iou_threshold]), max_det=None)
    matched, ignored = m.matched[0], m.ignored[0]
    gt_used = np.zeros(len(data.gt), bool)
    gt_used[m.gt_index[0][matched]] = True

    confusion = np.zeros((K + 1, K + 1), np.int64)
    np.add.at(confusion, (dt.cls[matched & ~ignored], dt.cls[matched & ~ignored]), 1)
    # Leftovers: predictions vs ground truth of other classes in the same image, by descending score.
    left_d = np.flatnonzero(~matched)
    left_g = np.flatnonzero(~gt_used & ~data.gt.crowd)
    for d in left_d[np.argsort(-dt.score[left_d], kind="stable")]:
        same_img = left_g[(data.gt.image[left_g] == dt.image[d]) & (data.gt.cls[left_g] != dt.cls[d])]
        if len(same_img):
            ious = iou_xywh(dt.box[d][None], data.gt.box[same_img], np.zeros(len(same_img), bool))[0]
            best = int(np.argmax(ious))
            if ious[best] >= gates.iou_threshold:
                g = same_img[best]
                confusion[data.gt.cls[g], dt.cls[d]] += 1
                left_g = left_g[left_g != g]
                continue
        confusion[K, dt.cls[d]] += 1  # a false positive on background
    np.add.at(confusion, (data.gt.cls[left_g], K), 1)  # missed: predicted as background

    gt_counts = np.bincount(data.gt.cls[~data.gt.crowd], minlength=K)
    gated_names = set(gates.evaluate) if gates.evaluate else {data.class_names[k] for k in np.flatnonzero(gt_counts)}
    results = []
    for k, name in enumerate(data.class_names):
        tp = int(confusion[k, k])
        fp = int(confusion[:, k].sum() - tp)
        fn = int(confusion[k, :].sum() - tp)
        p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        want = gates.for_class(name)
        thresholds = {"precision": want.precision, "recall": want.recall, "f1": want.f1}
        gated = name in gated_names
        failures = [f"{metric} {value:.3f} < {thresholds[metric]:.3f}"
                    for metric, value in (("precision", p), ("recall", r), ("f1", f1)) if value < thresholds[metric]]
        if not gated:
            verdict = "not gated"
            if tp + fp + fn == 0:
                continue  # a class neither labelled nor predicted: nothing to report
        elif gt_counts[k] == 0:
            verdict, failures = "no data", ["no ground truth for a gated class"]
        else:
            verdict = "fail" if failures else "pass"
        results.append(ClassResult(name, int(gt_counts[k]), tp, fp, fn, p, r, f1, thresholds, gated, verdict, failures))
    return AccuracyReport(results, confusion, [*data.class_names, BACKGROUND], gates.iou_threshold,
                          gates.score_threshold, map50, map50_95)


def confidence_histogram(scores: np.ndarray, edges: list[float] | None = None) -> dict:
    """The reference histogram for the drift monitors (fleet.manifest.ConfidenceHistogram shape)."""
    edges = edges or [round(0.05 * i, 2) for i in range(21)]
    counts, _ = np.histogram(np.asarray(scores, np.float64), bins=edges)
    return {"edges": list(edges), "counts": counts.astype(int).tolist()}


@dataclass
class StageResult:
    stage: str
    budget_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    verdict: str  # pass | over budget | missing | info


def load_latency(path: Path) -> dict[str, dict[str, float]]:
    doc = _load_json(path, "latency report")
    stages = doc.get("stages") if isinstance(doc, dict) else None
    if not isinstance(stages, dict):
        raise GatesInputError(f"{path}: expected {{\"stages\": {{STAGE: {{\"p50_ms\": ..., \"p95_ms\": ...}}}}}}")
    for name, s in stages.items():
        if not isinstance(s, dict) or not isinstance(s.get("p95_ms"), int | float):
            raise GatesInputError(f"{path}: stages.{name}.p95_ms must be a number")
    return stages


def latency_gate(manifest: ModelManifest, stages: dict[str, dict[str, float]]) -> list[StageResult]:
    budget = manifest.latency_budget_ms.as_dict()
    out = []
    for stage in STAGES:
        s = stages.get(stage)
        if s is None:
            out.append(StageResult(stage, budget[stage], None, None, "missing"))
        else:
            p95 = float(s["p95_ms"])
            out.append(StageResult(stage, budget[stage], s.get("p50_ms"), p95,
                                   "pass" if p95 <= budget[stage] else "over budget"))
    for stage, s in stages.items():
        if stage not in budget:
            out.append(StageResult(stage, None, s.get("p50_ms"), s["p95_ms"], "info"))
    return out
