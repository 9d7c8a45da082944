"""Procedural scenes with exact ground truth, for showing the retraining loop offline.

Three classes of shapes (circle, square, triangle) on textured backgrounds. A `SceneStyle`
controls lighting and background, so a "shifted" domain (a darker site with a different floor)
can be generated on demand: the drift the monitors should catch and the retraining should fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CLASSES = ["circle", "square", "triangle"]


@dataclass(frozen=True)
class SceneStyle:
    brightness: float = 1.0  # multiplies the whole image (lighting)
    contrast: float = 1.0  # around the image mean
    background: str = "noise"  # noise | stripes
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel (BGR) colour cast
    sensor_noise: float = 4.0  # std of additive noise

    @staticmethod
    def base() -> SceneStyle:
        return SceneStyle()

    @staticmethod
    def shifted() -> SceneStyle:
        """Night shift at another site: dim, low contrast, striped floor, a blue cast, noisy sensor."""
        return SceneStyle(brightness=0.45, contrast=0.55, background="stripes", tint=(1.25, 0.9, 0.75),
                          sensor_noise=10.0)


def _background(rng: np.random.Generator, size: int, style: SceneStyle) -> np.ndarray:
    if style.background == "stripes":
        period = rng.integers(6, 14)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:size, 0:size]
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        base = 110 + 60 * (np.sin(2 * np.pi * phase) > 0)
        img = np.repeat(base[..., None], 3, axis=2).astype(np.float32)
        img += rng.normal(0, 6, (1, 1, 3))
    else:
        low = rng.uniform(60, 190, (8, 8, 3)).astype(np.float32)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
        img += rng.normal(0, 12, (size, size, 3))
    return img


def _draw(img: np.ndarray, cls: int, box: tuple[int, int, int, int], color: tuple[float, ...]) -> None:
    x1, y1, x2, y2 = box
    if cls == 0:
        cv2.ellipse(img, (((x1 + x2) / 2, (y1 + y2) / 2), (x2 - x1, y2 - y1), 0), color, -1, cv2.LINE_AA)
    elif cls == 1:
        cv2.rectangle(img, (x1, y1), (x2 - 1, y2 - 1), color, -1)
    else:
        pts = np.array([[(x1 + x2) / 2, y1], [x2 - 1, y2 - 1], [x1, y2 - 1]], np.float32)
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], color, cv2.LINE_AA)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def make_scene(
    rng: np.random.Generator, size: int = 128, style: SceneStyle | None = None, max_objects: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One BGR uint8 image, its boxes (N, 4) x1,y1,x2,y2 in pixels, and class ids (N,)."""
    style = style or SceneStyle.base()
    img = _background(rng, size, style)
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):  # objects do not overlap much: their boxes stay exact
            w = int(rng.integers(size // 10, size // 3))
            h = int(np.clip(w * rng.uniform(0.8, 1.25), size // 10, size // 3))
            x1, y1 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            box = np.array([x1, y1, x1 + w, y1 + h], np.float32)
            if all(_iou(box, other) < 0.05 for other in boxes):
                break
        else:
            continue
        cls = int(rng.integers(0, len(CLASSES)))
        # Shapes contrast with the background in brightness, not only in colour.
        color = tuple(float(c) for c in rng.choice([rng.uniform(0, 50, 3), rng.uniform(210, 255, 3)]))
        _draw(img, cls, tuple(int(v) for v in box), color)
        boxes.append(box)
        classes.append(cls)
    mean = img.mean()
    img = (img - mean) * style.contrast + mean
    img = img * style.brightness * np.asarray(style.tint, np.float32)
    img += rng.normal(0, style.sensor_noise, img.shape)
    image = np.clip(img, 0, 255).astype(np.uint8)
    return image, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)


def make_dataset(n: int, seed: int, style: SceneStyle | None = None, size: int = 128):
    """`n` scenes: (images list, COCO ground-truth dict). Image ids are 1..n."""
    rng = np.random.default_rng(seed)
    images, coco_images, annotations = [], [], []
    for i in range(1, n + 1):
        img, boxes, classes = make_scene(rng, size, style)
        images.append(img)
        coco_images.append({"id": i, "file_name": f"{i:06d}.png", "width": size, "height": size})
        for box, cls in zip(boxes, classes, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i, "category_id": int(cls) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
    return images, {"images": coco_images, "annotations": annotations, "categories": categories}
