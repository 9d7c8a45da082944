"""Detection matching and COCO mAP, vectorised with numpy.

`match` reproduces pycocotools' greedy matching exactly (detections by descending score, each
takes the still-free ground truth with the highest IoU >= threshold, ties to the later one;
crowd regions may absorb many detections and are never missed; a detection on a crowd region
is ignored), for many IoU thresholds at once. Instead of a Python loop per image and class,
all (image, class) groups of similar size advance together, one detection rank per step.

`coco_map` then accumulates precision/recall exactly like COCOeval.accumulate (101 recall
points, precision envelope) for area range "all" and maxDets=100, and returns mAP@0.5 and
mAP@[.5:.95]: the two figures pycocotools' summarize() prints first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


@dataclass
class Boxes:
    """Flat arrays of annotations or detections. Boxes are COCO [x, y, w, h]."""

    image: np.ndarray  # int index into the image list
    cls: np.ndarray  # int class index
    box: np.ndarray  # (N, 4) float64
    score: np.ndarray  # detections: confidence; ground truth: unused (zeros)
    crowd: np.ndarray  # bool; ground truth only

    def __len__(self) -> int:
        return len(self.image)


@dataclass
class Matches:
    """Per detection (in the caller's order): matched and ignored flags per threshold, matched gt index."""

    matched: np.ndarray  # (T, N) bool
    ignored: np.ndarray  # (T, N) bool: matched a crowd region (neither TP nor FP)
    gt_index: np.ndarray  # (T, N) int, -1 if unmatched
    kept: np.ndarray  # (N,) bool: within max_det of its (image, class) group
    rank: np.ndarray  # (N,) int: rank by score within its group


def iou_xywh(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of (..., D, 4) against (..., G, 4) boxes, as pycocotools' bbIou computes it
    (for a crowd region: intersection over the detection's area)."""
    dx, dy, dw, dh = (d[..., :, None, k] for k in range(4))
    gx, gy, gw, gh = (g[..., None, :, k] for k in range(4))
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    da, ga = dw * dh, gw * gh
    union = np.where(crowd[..., None, :], da, da + ga - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = inter / union
    return np.where((w > 0) & (h > 0), out, 0.0)


def _group_keys(image: np.ndarray, cls: np.ndarray, num_classes: int) -> np.ndarray:
    return image.astype(np.int64) * num_classes + cls.astype(np.int64)


def match(gt: Boxes, dt: Boxes, num_classes: int, thresholds: np.ndarray, max_det: int | None = 100) -> Matches:
    T, N = len(thresholds), len(dt)
    matched = np.zeros((T, N), bool)
    ignored = np.zeros((T, N), bool)
    gt_index = np.full((T, N), -1, np.int64)
    # Detections: by group, then score descending, stable (pycocotools uses a mergesort on -score).
    dkey = _group_keys(dt.image, dt.cls, num_classes)
    dorder = np.lexsort((np.arange(N), -dt.score, dkey))
    dkey_sorted = dkey[dorder]
    starts = np.r_[0, np.flatnonzero(np.diff(dkey_sorted)) + 1] if N else np.zeros(0, np.int64)
    rank_sorted = np.arange(N) - np.repeat(starts, np.diff(np.r_[starts, N])) if N else np.zeros(0, np.int64)
    rank = np.empty(N, np.int64)
    rank[dorder] = rank_sorted
    kept = rank < max_det if max_det else np.ones(N, bool)
    # Ground truth: by group, non-crowd first, then file order.
    M = len(gt)
    gkey = _group_keys(gt.image, gt.cls, num_classes)
    gorder = np.lexsort((np.arange(M), gt.crowd, gkey))
    gkey_sorted = gkey[gorder]
    if not N or not M:
        return Matches(matched, ignored, gt_index, kept, rank)

    # Groups that have both detections and ground truth.
    d_groups, d_start, d_count = np.unique(dkey_sorted[kept[dorder]], return_index=True, return_counts=True)
    dsel = dorder[kept[dorder]]  # kept detections in (group, rank) order
    g_groups, g_start, g_count = np.unique(gkey_sorted, return_index=True, return_counts=True)
    common, di, gi = np.intersect1d(d_groups, g_groups, assume_unique=True, return_indices=True)
    if not len(common):
        return Matches(matched, ignored, gt_index, kept, rank)
    nd, ng = d_count[di], g_count[gi]
    thr = np.minimum(thresholds, 1 - 1e-10)[None, :, None]

    # Bucket groups by padded size so one large group does not pad all the others.
    bucket = np.ceil(np.log2(nd)).astype(int) * 64 + np.ceil(np.log2(ng)).astype(int)
    for b in np.unique(bucket):
        sel = np.flatnonzero(bucket == b)
        D, G = int(nd[sel].max()), int(ng[sel].max())
        dpos = d_start[di[sel]][:, None] + np.arange(D)[None, :]
        dvalid = np.arange(D)[None, :] < nd[sel][:, None]
        didx = dsel[np.where(dvalid, dpos, 0)]  # original detection indices (n, D)
        gpos = g_start[gi[sel]][:, None] + np.arange(G)[None, :]
        gvalid = np.arange(G)[None, :] < ng[sel][:, None]
        gidx = gorder[np.where(gvalid, gpos, 0)]  # original gt indices (n, G)
        crowd = gt.crowd[gidx] & gvalid
        ious = iou_xywh(dt.box[didx], gt.box[gidx], crowd)  # (n, D, G)
        ious = np.where(gvalid[:, None, :], ious, -1.0)
        free = np.repeat(gvalid[:, None, :], len(thresholds), axis=1)  # (n, T, G)
        rev = slice(None, None, -1)
        for r in range(D):
            active = dvalid[:, r]
            iou_r = ious[:, r, None, :]  # (n, 1, G)
            cand = free & (iou_r >= thr)
            picked = np.full(cand.shape[:2], -1)
            for want_crowd in (False, True):  # non-crowd first; crowd only if none of those fit
                c = cand & (crowd[:, None, :] == want_crowd) & (picked[..., None] < 0)
                score = np.where(c, iou_r, -np.inf)
                last_best = G - 1 - np.argmax(score[..., rev], axis=2)  # ties go to the later gt
                ok = c.any(axis=2)
                picked = np.where(ok, last_best, picked)
            picked = np.where(active[:, None], picked, -1)
            hit = picked >= 0
            rows, ts = np.nonzero(hit)
            g_local = picked[rows, ts]
            is_crowd = crowd[rows, g_local]
            # A crowd region stays free: it may absorb many detections.
            free[rows[~is_crowd], ts[~is_crowd], g_local[~is_crowd]] = False
            det = didx[rows, r]
            matched[ts, det] = True
            ignored[ts, det] = is_crowd
            gt_index[ts, det] = gidx[rows, g_local]
    return Matches(matched, ignored, gt_index, kept, rank)


def average_precision(gt: Boxes, dt: Boxes, m: Matches, num_classes: int) -> np.ndarray:
    """COCOeval.accumulate's precision array (T, R, K) for area 'all'; -1 where a class has no gt."""
    T, R = m.matched.shape[0], len(RECALL_POINTS)
    precision = -np.ones((T, R, num_classes))
    npig = np.bincount(gt.cls[~gt.crowd], minlength=num_classes)
    keep = np.flatnonzero(m.kept)
    # Order within a class: images in id order, each image's detections by rank, then a stable sort
    # on -score (exactly how COCOeval concatenates and sorts).
    order = keep[np.lexsort((m.rank[keep], dt.image[keep], -dt.score[keep], dt.cls[keep]))]
    cls_sorted = dt.cls[order]
    bounds = np.searchsorted(cls_sorted, np.arange(num_classes + 1))
    for k in range(num_classes):
        if npig[k] == 0:
            continue
        idx = order[bounds[k]:bounds[k + 1]]
        tps = m.matched[:, idx] & ~m.ignored[:, idx]
        fps = ~m.matched[:, idx] & ~m.ignored[:, idx]
        tp = np.cumsum(tps, axis=1, dtype=np.float64)
        fp = np.cumsum(fps, axis=1, dtype=np.float64)
        nd = len(idx)
        for t in range(T):
            q = np.zeros(R)
            if nd:
                rc = tp[t] / npig[k]
                pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
                pr = np.maximum.accumulate(pr[::-1])[::-1]  # the precision envelope
                inds = np.searchsorted(rc, RECALL_POINTS, side="left")
                valid = inds < nd
                q[valid] = pr[inds[valid]]
            precision[t, :, k] = q
    return precision


def coco_map(gt: Boxes, dt: Boxes, num_classes: int) -> tuple[float, float]:
    """(mAP@0.5, mAP@[.5:.95]) as pycocotools computes them (bbox, area all, maxDets 100)."""
    m = match(gt, dt, num_classes, IOU_THRESHOLDS, max_det=100)
    p = average_precision(gt, dt, m, num_classes)

    def mean(a: np.ndarray) -> float:
        a = a[a > -1]
        return float(np.mean(a)) if a.size else -1.0

    return mean(p[0]), mean(p)
