"""Model outputs -> detections in frame coordinates: the decoder the manifest names, class-aware NMS, unletterbox.

Everything is vectorised numpy over the whole batch; NMS runs once per batch (boxes of different images and
classes are moved apart so they never overlap), then the survivors are split per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from app.pipeline.preprocess import LetterboxInfo, unletterbox
from app.pipeline.types import Detections
from fleet.spec.manifest import DETECTIONS_OUTPUT, BoxesScoresClassesParams, ModelManifest, NanoDetParams

Outputs = Mapping[str, np.ndarray]


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1y1x2y2 box against (N, 4) boxes."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    groups: np.ndarray | None = None,
    max_keep: int | None = None,
) -> np.ndarray:
    """Greedy NMS; indices of kept boxes by descending score. Boxes only suppress boxes of the same group.

    Groups (class, or image*classes+class) are separated by offsetting coordinates by group * span, the
    usual trick that makes one NMS pass class-aware. A box suppresses another when IoU > iou_threshold.
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0, np.int64)
    boxes = np.asarray(boxes, np.float64)
    if groups is not None and n > 1:
        span = float(boxes.max() - boxes.min()) + 1.0
        boxes = boxes + (np.asarray(groups, np.float64) * span)[:, None]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    limit = n if max_keep is None else max_keep
    while order.size and len(keep) < limit:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
        h = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
        inter = np.maximum(w, 0) * np.maximum(h, 0)
        # iou <= t  <=>  inter <= t * union (no division; a zero-area pair counts as IoU 0)
        order = rest[inter <= iou_threshold * (areas[i] + areas[rest] - inter)]
    return np.asarray(keep, np.int64)


def _split(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    image_ids: np.ndarray,
    infos: Sequence[LetterboxInfo],
) -> list[Detections]:
    """Per image, boxes mapped back to frame coordinates (input order is kept: already by score)."""
    out = []
    for b, info in enumerate(infos):
        sel = image_ids == b
        out.append(
            Detections(
                unletterbox(boxes[sel], info),
                scores[sel].astype(np.float32),
                class_ids[sel].astype(np.int32),
            )
        )
    return out


def _select(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    image_ids: np.ndarray,
    num_classes: int,
    iou: float | None,
    max_detections: int,
) -> np.ndarray:
    """Indices surviving class-aware, per-image NMS (all images in one pass), at most max_detections each."""
    if iou is None:
        keep = np.argsort(-scores, kind="stable")
    else:
        keep = nms(boxes, scores, iou, groups=image_ids.astype(np.int64) * num_classes + class_ids)
    # Cap per image: rank of each kept box within its image (keep is by descending score).
    img = image_ids[keep]
    rank = np.zeros(len(keep), np.int64)
    for b in np.unique(img):
        idx = np.flatnonzero(img == b)
        rank[idx] = np.arange(len(idx))
    return keep[rank < max_detections]


class NanoDetDecoder:
    """NanoDet head outputs: per stride, sigmoid class scores [B, n, C] and box distributions [B, n, 4*(reg_max+1)].

    A cell x, y (row-major, index = y * grid_w + x) has its centre at ((x + 0.5) * stride, (y + 0.5) * stride)
    in input pixels; each side's distance (left, top, right, bottom) is the expectation of a softmax over
    reg_max+1 bins, times the stride.
    """

    def __init__(self, params: NanoDetParams, input_w: int, input_h: int, num_classes: int, pre_nms_top_k: int = 1000):
        self.p = params
        self.num_classes = num_classes
        self.pre_nms_top_k = pre_nms_top_k
        centres, strides = [], []
        for s in params.strides:
            gw, gh = math.ceil(input_w / s), math.ceil(input_h / s)
            ys, xs = np.mgrid[0:gh, 0:gw]
            centres.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], axis=1))
            strides.append(np.full(gw * gh, s, np.float32))
        self.sizes = [len(s) for s in strides]
        self.offsets = np.cumsum([0, *self.sizes[:-1]]).tolist()
        self.centres = np.concatenate(centres).astype(np.float32)  # (N, 2)
        self.strides = np.concatenate(strides)  # (N,)
        self.bins = np.arange(params.reg_max + 1, dtype=np.float32)

    def _level(self, outputs: Outputs, name: str, n: int, width: int, batch: int) -> np.ndarray:
        if name not in outputs:
            raise KeyError(f"model output '{name}' missing (have {sorted(outputs)})")
        arr = np.asarray(outputs[name])
        if arr.ndim != 3 or arr.shape[1:] != (n, width):
            raise ValueError(f"model output '{name}' has shape {arr.shape}; expected (batch, {n}, {width})")
        if arr.shape[0] < batch:
            raise ValueError(f"model output '{name}' holds {arr.shape[0]} images; {batch} frames were sent")
        return arr[:batch]

    def distances(self, dist: np.ndarray) -> np.ndarray:
        """(M, 4*(reg_max+1)) bin logits -> (M, 4) expected distances in stride units."""
        logits = dist.reshape(-1, 4, self.p.reg_max + 1).astype(np.float32)
        logits = logits - logits.max(axis=2, keepdims=True)
        e = np.exp(logits)
        return (e @ self.bins) / e.sum(axis=2)

    def __call__(self, outputs: Outputs, infos: Sequence[LetterboxInfo]) -> list[Detections]:
        batch, nc, width = len(infos), self.num_classes, 4 * (self.p.reg_max + 1)
        parts = []
        levels = zip(self.p.strides, self.p.score_outputs, self.p.box_outputs, self.sizes, self.offsets, strict=True)
        for stride, score_name, box_name, n, offset in levels:
            scores = self._level(outputs, score_name, n, nc, batch)
            dist = self._level(outputs, box_name, n, width, batch)
            # Every (image, cell, class) over the threshold is a candidate (multi-label, as NanoDet does).
            # flatnonzero on the flat view is ~15x faster than a 3-D nonzero.
            flat = np.flatnonzero(scores.reshape(-1) > self.p.score_threshold)
            if flat.size == 0:
                continue
            conf = scores.reshape(-1)[flat]
            image_cell, cls = np.divmod(flat, nc)
            # Decode only the cells that have a candidate.
            cells, inverse = np.unique(image_cell, return_inverse=True)
            b, cell = np.divmod(cells, n)
            d = self.distances(dist[b, cell]) * stride
            ctr = self.centres[offset + cell]
            boxes = np.concatenate([ctr - d[:, :2], ctr + d[:, 2:]], axis=1)
            inverse = inverse.ravel()
            parts.append((boxes[inverse], conf, cls, b[inverse]))
        if not parts:
            return [Detections.empty() for _ in infos]
        boxes, conf, cls, img = (np.concatenate(x) for x in zip(*parts, strict=True))
        top_k = self.pre_nms_top_k * batch
        if len(conf) > top_k:  # bound NMS work on noisy frames
            top = np.argpartition(-conf, top_k)[:top_k]
            boxes, conf, cls, img = boxes[top], conf[top], cls[top], img[top]
        keep = _select(boxes, conf, cls, img, nc, self.p.nms_iou, self.p.max_detections)
        return _split(boxes[keep], conf[keep], cls[keep], img[keep], infos)


class BoxesScoresClassesDecoder:
    """For models that decode themselves: boxes [B, N, 4], scores [B, N], classes [B, N] (ids, any number type)."""

    def __init__(self, params: BoxesScoresClassesParams, input_w: int, input_h: int, num_classes: int):
        self.p = params
        self.input_w, self.input_h = input_w, input_h
        self.num_classes = num_classes

    def _get(self, outputs: Outputs, name: str, ndim: int) -> np.ndarray:
        if name not in outputs:
            raise KeyError(f"model output '{name}' missing (have {sorted(outputs)})")
        arr = np.asarray(outputs[name])
        while arr.ndim > ndim and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != ndim:
            raise ValueError(f"model output '{name}' has shape {arr.shape}; expected {ndim} dims")
        return arr

    def to_xyxy(self, boxes: np.ndarray) -> np.ndarray:
        boxes = boxes.astype(np.float32, copy=True)
        if self.p.box_format == "xywh":
            boxes[..., 2:] += boxes[..., :2]
        elif self.p.box_format == "cxcywh":
            half = boxes[..., 2:] / 2
            boxes = np.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)
        if self.p.normalized:
            boxes *= np.array([self.input_w, self.input_h, self.input_w, self.input_h], np.float32)
        return boxes

    def __call__(self, outputs: Outputs, infos: Sequence[LetterboxInfo]) -> list[Detections]:
        boxes = self._get(outputs, self.p.boxes_output, 3)[: len(infos)]
        scores = self._get(outputs, self.p.scores_output, 2)[: len(infos)]
        classes = self._get(outputs, self.p.classes_output, 2)[: len(infos)]
        if boxes.shape[:2] != scores.shape or scores.shape != classes.shape or boxes.shape[-1] != 4:
            raise ValueError(
                f"outputs disagree: boxes {boxes.shape}, scores {scores.shape}, classes {classes.shape}; "
                "expected (B, N, 4), (B, N), (B, N)"
            )
        b, i = np.nonzero(scores > self.p.score_threshold)
        cls = classes[b, i].astype(np.int64)
        if len(cls) and (cls.min() < 0 or cls.max() >= self.num_classes):
            raise ValueError(f"class ids outside 0..{self.num_classes - 1}: {sorted(set(cls.tolist()))[:10]}")
        xyxy = self.to_xyxy(boxes[b, i])
        conf = scores[b, i].astype(np.float32)
        keep = _select(xyxy, conf, cls, b, self.num_classes, self.p.nms_iou, self.p.max_detections)
        return _split(xyxy[keep], conf[keep], cls[keep], b[keep], infos)


class FixedDetectionsDecoder:
    """The output of a graph that decoded and NMS-ed on the server (fleet/triton/fuse.py, `triton.server_decode`):
    [B, max_det, 6] rows of x1, y1, x2, y2 (input pixels), score, class, best first; unused rows have class -1.
    All that is left here is dropping the unused rows and unletterboxing."""

    def __init__(self, num_classes: int, max_detections: int, output: str = DETECTIONS_OUTPUT):
        self.num_classes, self.max_detections, self.output = num_classes, max_detections, output

    def __call__(self, outputs: Outputs, infos: Sequence[LetterboxInfo]) -> list[Detections]:
        if self.output not in outputs:
            raise KeyError(f"model output '{self.output}' missing (have {sorted(outputs)})")
        arr = np.asarray(outputs[self.output])
        if arr.ndim != 3 or arr.shape[1:] != (self.max_detections, 6) or arr.shape[0] < len(infos):
            raise ValueError(f"model output '{self.output}' has shape {arr.shape}; expected "
                             f"({len(infos)}, {self.max_detections}, 6)")
        out = []
        for rows, info in zip(arr, infos, strict=False):
            rows = rows[rows[:, 5] >= 0]
            cls = rows[:, 5].astype(np.int32)
            if len(cls) and int(cls.max()) >= self.num_classes:
                raise ValueError(f"class ids outside 0..{self.num_classes - 1}: {sorted(set(cls.tolist()))[:10]}")
            out.append(Detections(unletterbox(rows[:, :4], info), rows[:, 4].astype(np.float32), cls))
        return out


Decoder = Callable[[Outputs, Sequence[LetterboxInfo]], list[Detections]]

DECODERS: dict[str, Callable[..., Decoder]] = {
    "nanodet": NanoDetDecoder,
    "boxes_scores_classes": BoxesScoresClassesDecoder,
}


def decoder_for(manifest: ModelManifest) -> Decoder:
    """The decoder the manifest names, set up for its input size and class list (with triton.server_decode:
    the reader of the server's fixed-size output)."""
    name = manifest.decoder.name
    if manifest.triton.server_decode:
        return FixedDetectionsDecoder(len(manifest.classes), manifest.decoder.params.max_detections)
    if name not in DECODERS:
        raise ValueError(f"{manifest.ref}: no decoder named '{name}' (known: {sorted(DECODERS)})")
    inp = manifest.input
    return DECODERS[name](manifest.decoder.params, inp.width, inp.height, len(manifest.classes))
