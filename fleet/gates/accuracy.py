"""Accuracy and latency gates: what may ship. Fail closed.

Accuracy: predictions (COCO results) against a held-out set (COCO dataset). Per class, the
predictions at or above the manifest's score threshold are matched greedily by descending score
to ground truth of the same image and class at IoU >= the manifest's IoU threshold (each ground
truth used once): TP / FP / FN, precision, recall, F1 against the per-class thresholds.

COCO `iscrowd` regions, as COCOeval treats them: a prediction that finds no ordinary ground truth
but covers a crowd region of its class (intersection over the prediction's area >= the IoU
threshold) is ignored, neither TP nor FP; a crowd region is never missed, is not counted in GT,
and a class with only crowd regions is not gated by default.

Confusion matrix: rows are the ground-truth class, columns the predicted class, each with a
`background` entry. After same-class matching, a leftover prediction that overlaps a leftover
ground truth of another class at the IoU threshold is a confusion (row = its true class,
column = the predicted class) instead of a background FP plus a background FN; per-class
precision and recall still count it as the error it is (FP of the predicted class, FN of the
true one). Leftover predictions go to the background row, leftover ground truth to the
background column.

Gated classes: manifest.gates.evaluate if set, else every class with ground truth. Verdicts:
pass / fail; a gated class with no ground truth fails ("no data" when it has no predictions
either); a class with ground truth and no predictions fails on recall; no gated class at all
fails. Classes outside the gate are reported as "not gated" (or "no data").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NotRequired

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from fleet.gates.cocoeval import Boxes, coco_map, iou_xywh, match
from fleet.spec.manifest import STAGES, ModelManifest

BACKGROUND = "background"


class GatesInputError(ValueError):
    """Bad input (exit status 2): malformed JSON, unknown ids, classes the model does not have."""


# The COCO shapes we read; other keys (segmentation, area, file_name...) are allowed and dropped.
# TypedDicts, not models: validating 100k boxes stays ~3x cheaper.
Id = StrictInt
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
BBox = Annotated[list[Number], Field(min_length=4, max_length=4)]  # [x, y, w, h]; w, h >= 0 checked in bulk
_OPEN = ConfigDict(extra="ignore")


@with_config(_OPEN)
class CocoImage(TypedDict):
    id: Id


@with_config(_OPEN)
class CocoCategory(TypedDict):
    id: Id
    name: str


@with_config(_OPEN)
class CocoAnnotation(TypedDict):
    image_id: Id
    category_id: Id
    bbox: BBox
    iscrowd: NotRequired[Annotated[int, Field(ge=0, le=1)]]


@with_config(_OPEN)
class CocoResult(TypedDict):
    image_id: Id
    category_id: Id
    bbox: BBox
    score: Annotated[Number, Field(ge=0.0, le=1.0)]


@with_config(_OPEN)
class CocoDataset(TypedDict):
    images: list[CocoImage]
    annotations: list[CocoAnnotation]
    categories: list[CocoCategory]


_DATASET = TypeAdapter(CocoDataset)
_RESULTS = TypeAdapter(list[CocoResult])


def _where(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"


def _read_json(path: Path, what: str) -> Any:
    try:
        text = Path(path).read_text()
    except FileNotFoundError as exc:
        raise GatesInputError(f"{path}: {what} file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise GatesInputError(f"{path}: cannot read {what}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GatesInputError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON in {what}: {exc.msg}") from exc


def _validate(adapter: TypeAdapter, raw: Any, source: str, what: str) -> Any:
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise GatesInputError(f"{source}: {what}: {_where(errors[0]['loc'])}: {errors[0]['msg']}{more}") from exc


def _lookup(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, int | None]:
    """values[index of each wanted in keys] (keys sorted); also the first position whose id is unknown."""
    at = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    known = keys[at] == wanted if len(keys) else np.zeros(len(wanted), bool)
    bad = np.flatnonzero(~known)
    return (values[at] if len(keys) else np.zeros(len(wanted), np.int64)), (int(bad[0]) if len(bad) else None)


def _ids(rows: list[dict], key: str) -> np.ndarray:
    return np.fromiter((r[key] for r in rows), np.int64, len(rows))


def _bboxes(rows: list[dict], where: str) -> np.ndarray:
    box = np.array([r["bbox"] for r in rows], np.float64).reshape(len(rows), 4)
    bad = np.flatnonzero((box[:, 2:] < 0).any(axis=1))
    if len(bad):
        raise GatesInputError(f"{where}[{bad[0]}].bbox: bbox is [x, y, w, h] with w, h >= 0, got {rows[bad[0]]['bbox']}")
    return box


@dataclass
class Dataset:
    image_ids: np.ndarray  # sorted COCO image ids; Boxes.image indexes this
    class_names: list[str]  # the manifest's classes; Boxes.cls indexes this list
    category_ids: np.ndarray  # sorted COCO category ids
    category_class: np.ndarray  # the manifest class index of each of those
    gt: Boxes

    @property
    def category_to_class(self) -> dict[int, int]:
        return dict(zip(self.category_ids.tolist(), self.category_class.tolist(), strict=True))


def dataset_from_coco(raw: Any, classes: list[str], source: str = "ground truth") -> Dataset:
    """A parsed COCO dataset (validated here) with its categories mapped to the model's classes by name."""
    coco: CocoDataset = _validate(_DATASET, raw, source, "ground truth")
    index = {name: i for i, name in enumerate(classes)}
    for i, c in enumerate(coco["categories"]):
        if c["name"] not in index:
            raise GatesInputError(f"{source}: categories[{i}]: category {c['id']} '{c['name']}' is not a class of "
                                  f"the model (classes: {', '.join(classes)})")
    image_ids = np.sort(_ids(coco["images"], "id"))
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    cat_ids = np.array([c["id"] for c in cats], np.int64)
    for what, ids in (("image", image_ids), ("category", cat_ids)):
        dupes = ids[1:][ids[1:] == ids[:-1]]
        if len(dupes):
            raise GatesInputError(f"{source}: duplicate {what} id {dupes[0]}")
    cat_class = np.array([index[c["name"]] for c in cats], np.int64)
    anns = coco["annotations"]
    image, bad_img = _lookup(image_ids, np.arange(len(image_ids)), _ids(anns, "image_id"))
    if bad_img is not None:
        raise GatesInputError(f"{source}: annotations[{bad_img}].image_id: unknown image_id {anns[bad_img]['image_id']}")
    cls, bad_cat = _lookup(cat_ids, cat_class, _ids(anns, "category_id"))
    if bad_cat is not None:
        raise GatesInputError(
            f"{source}: annotations[{bad_cat}].category_id: unknown category_id {anns[bad_cat]['category_id']}")
    crowd = np.fromiter((a.get("iscrowd", 0) for a in anns), bool, len(anns))
    gt = Boxes(image, cls, _bboxes(anns, f"{source}: annotations"), np.zeros(len(anns)), crowd)
    return Dataset(image_ids, list(classes), cat_ids, cat_class, gt)


def predictions_from_results(raw: Any, data: Dataset, source: str = "predictions") -> Boxes:
    """A parsed COCO results list (validated here) against the dataset's images and categories."""
    results: list[CocoResult] = _validate(_RESULTS, raw, source, "predictions")
    image, bad_img = _lookup(data.image_ids, np.arange(len(data.image_ids)), _ids(results, "image_id"))
    if bad_img is not None:
        raise GatesInputError(f"{source}: [{bad_img}].image_id: unknown image_id {results[bad_img]['image_id']} "
                              "(not in the ground truth)")
    cls, bad_cat = _lookup(data.category_ids, data.category_class, _ids(results, "category_id"))
    if bad_cat is not None:
        raise GatesInputError(f"{source}: [{bad_cat}].category_id: unknown category_id "
                              f"{results[bad_cat]['category_id']} (not in the ground truth)")
    score = np.fromiter((r["score"] for r in results), np.float64, len(results))
    return Boxes(image, cls, _bboxes(results, f"{source}: "), score, np.zeros(len(results), bool))


def load_ground_truth(path: Path, classes: list[str]) -> Dataset:
    return dataset_from_coco(_read_json(path, "ground truth"), classes, str(path))


def load_predictions(path: Path, data: Dataset) -> Boxes:
    return predictions_from_results(_read_json(path, "predictions"), data, str(path))


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


def _confusions(gt: Boxes, dt: Boxes, left_g: np.ndarray, left_d: np.ndarray, iou_threshold: float,
                confusion: np.ndarray) -> np.ndarray:
    """Pair leftover predictions with leftover ground truth of another class in the same image
    (greedy: by descending score, the free ground truth with the highest IoU >= threshold). Adds the
    pairs to `confusion`; returns the leftover predictions that found no such pair."""
    left_d = left_d[np.lexsort((-dt.score[left_d], dt.image[left_d]))]
    left_g = left_g[np.argsort(gt.image[left_g], kind="stable")]
    d_img, g_img = dt.image[left_d], gt.image[left_g]
    unpaired = []
    for img in np.unique(d_img):
        ds = left_d[np.searchsorted(d_img, img):np.searchsorted(d_img, img, "right")]
        gs = left_g[np.searchsorted(g_img, img):np.searchsorted(g_img, img, "right")]
        if not len(gs):
            unpaired.append(ds)
            continue
        ious = iou_xywh(dt.box[ds], gt.box[gs], np.zeros(len(gs), bool))
        ious[dt.cls[ds][:, None] == gt.cls[gs][None, :]] = -1.0  # same class: already had its chance
        for i, d in enumerate(ds):
            j = int(np.argmax(ious[i]))
            if ious[i, j] >= iou_threshold:
                confusion[gt.cls[gs[j]], dt.cls[d]] += 1
                ious[:, j] = -1.0  # used
            else:
                unpaired.append(ds[i:i + 1])
    return np.concatenate(unpaired) if unpaired else np.zeros(0, np.int64)


def evaluate(manifest: ModelManifest, data: Dataset, preds: Boxes) -> AccuracyReport:
    """Per-class TP/FP/FN, precision, recall, F1 and verdicts, the confusion matrix, and COCO mAP."""
    gates = manifest.gates
    K = len(data.class_names)
    map50, map50_95 = coco_map(data.gt, preds, K)

    confident = preds.score >= gates.score_threshold
    dt = Boxes(preds.image[confident], preds.cls[confident], preds.box[confident], preds.score[confident],
               preds.crowd[confident])
    m = match(data.gt, dt, K, np.array([gates.iou_threshold]), max_det=None)
    matched, ignored = m.matched[0], m.ignored[0]  # ignored: matched a crowd region, neither TP nor FP
    gt_used = np.zeros(len(data.gt), bool)
    gt_used[m.gt_index[0][matched & ~ignored]] = True

    # Rows: ground-truth class, columns: predicted class; index K is background.
    confusion = np.zeros((K + 1, K + 1), np.int64)
    tp_cls = dt.cls[matched & ~ignored]
    np.add.at(confusion, (tp_cls, tp_cls), 1)
    left_g = np.flatnonzero(~gt_used & ~data.gt.crowd)  # a crowd region is never missed
    before = confusion.copy()
    unpaired = _confusions(data.gt, dt, left_g, np.flatnonzero(~matched), gates.iou_threshold, confusion)
    np.add.at(confusion, (np.full(len(unpaired), K), dt.cls[unpaired]), 1)  # false positives on background
    # Missed ground truth (predicted as background): leftovers minus those paired as confusions.
    paired_per_class = (confusion - before)[:K, :K].sum(axis=1)
    missed = np.bincount(data.gt.cls[left_g], minlength=K) - paired_per_class
    confusion[:K, K] += missed

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
        if tp + fp + fn == 0:
            verdict = "no data"  # neither labelled nor predicted: fails closed when gated
            failures = ["no ground truth and no predictions"] if gated else []
        elif not gated:
            verdict, failures = "not gated", []
        elif gt_counts[k] == 0:
            verdict, failures = "fail", [f"no ground truth, {fp} false positive(s)"]
        else:
            verdict = "fail" if failures else "pass"
        results.append(ClassResult(name, int(gt_counts[k]), tp, fp, fn, p, r, f1, thresholds, gated, verdict, failures))
    return AccuracyReport(results, confusion, [*data.class_names, BACKGROUND], gates.iou_threshold,
                          gates.score_threshold, map50, map50_95)


DEFAULT_EDGES = [round(0.05 * i, 2) for i in range(21)]  # 0..1 in 20 bins


def confidence_histogram(scores: np.ndarray, edges: list[float] | None = None) -> dict:
    """The reference histogram for the drift monitors (fleet.spec.manifest.ConfidenceHistogram shape).
    The last bin is closed: a score of exactly 1.0 counts."""
    edges = list(edges or DEFAULT_EDGES)
    counts, _ = np.histogram(np.asarray(scores, np.float64), bins=edges)
    return {"edges": edges, "counts": counts.astype(int).tolist()}


@dataclass
class StageResult:
    stage: str
    budget_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    verdict: str  # pass | over budget | missing | info


class StageLatency(BaseModel):
    model_config = _OPEN
    p50_ms: Annotated[Number, Field(ge=0)] | None = None
    p95_ms: Annotated[Number, Field(ge=0)]


class LatencyFile(BaseModel):
    model_config = _OPEN
    stages: dict[str, StageLatency]


def load_latency(path: Path) -> dict[str, StageLatency]:
    doc = _validate(TypeAdapter(LatencyFile), _read_json(path, "latency report"), str(path), "latency report")
    return doc.stages


def latency_gate(manifest: ModelManifest, stages: dict[str, StageLatency]) -> list[StageResult]:
    """Measured p95 per stage against the manifest's budget; a budgeted stage not measured fails closed."""
    budget = manifest.latency_budget_ms.as_dict()
    out = []
    for stage in STAGES:
        s = stages.get(stage)
        if s is None:
            out.append(StageResult(stage, budget[stage], None, None, "missing"))
        else:
            verdict = "pass" if s.p95_ms <= budget[stage] else "over budget"
            out.append(StageResult(stage, budget[stage], s.p50_ms, s.p95_ms, verdict))
    out += [StageResult(name, None, s.p50_ms, s.p95_ms, "info") for name, s in stages.items() if name not in budget]
    return out


def latency_passed(results: list[StageResult]) -> bool:
    return all(s.verdict in ("pass", "info") for s in results)
