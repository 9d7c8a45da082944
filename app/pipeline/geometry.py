"""Plane geometry for rules, vectorised over points (frame pixel coordinates, y grows downward).

Conventions used by app.pipeline.rules:
- a box's *anchor* is its bottom-centre (where a person or vehicle touches the ground);
- the *side* of a point with respect to a directed line a->b is the sign of the cross product
  (b - a) x (p - a): +1 on the right of a->b as seen on screen, -1 on the left, 0 on the line.
  For a horizontal line drawn left to right, -1 is above it and +1 below it.
"""

from __future__ import annotations

import numpy as np


def anchors(boxes: np.ndarray) -> np.ndarray:
    """Bottom-centre points (N, 2) of boxes (N, 4) given as x1, y1, x2, y2."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) * 0.5, boxes[:, 3]], axis=1)


def polygon_area(polygon: np.ndarray) -> float:
    """Absolute area of a simple polygon (M, 2) (shoelace formula)."""
    p = np.asarray(polygon, np.float64)
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) * 0.5)


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Which points (N, 2) lie inside polygon (M, 2): bool (N,). Even-odd ray casting over all edges at once.

    Points exactly on an edge may fall either way; zones are drawn by hand, so that does not matter.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    poly = np.asarray(polygon, np.float64)
    px, py = pts[:, 0:1], pts[:, 1:2]  # (N, 1) against (M,) edges
    x1, y1 = poly[:, 0], poly[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    straddles = (y1 > py) != (y2 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
    crossings = straddles & (px < x_cross)
    return (np.count_nonzero(crossings, axis=1) % 2) == 1


def side_of_line(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Side (-1, 0, +1) of each point (N, 2) with respect to the directed line a->b (see module docstring)."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cross = (b[0] - a[0]) * (pts[:, 1] - a[1]) - (b[1] - a[1]) * (pts[:, 0] - a[0])
    return np.sign(cross).astype(np.int8)


def segments_cross_line(p0: np.ndarray, p1: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether each motion segment p0[i]->p1[i] crosses the line *segment* a-b: bool (N,).

    True when p0 and p1 are strictly on opposite sides of a->b and a, b are not strictly on the same side of
    p0->p1 (so passing beyond the segment's ends does not count, touching an end does).
    """
    p0 = np.asarray(p0, np.float64).reshape(-1, 2)
    p1 = np.asarray(p1, np.float64).reshape(-1, 2)
    s0, s1 = side_of_line(p0, a, b), side_of_line(p1, a, b)
    d = p1 - p0
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ca = np.sign(d[:, 0] * (a[1] - p0[:, 1]) - d[:, 1] * (a[0] - p0[:, 0]))
    cb = np.sign(d[:, 0] * (b[1] - p0[:, 1]) - d[:, 1] * (b[0] - p0[:, 0]))
    return (s0 * s1 < 0) & (ca * cb <= 0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (N, M) of boxes a (N, 4) and b (M, 4), x1, y1, x2, y2."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)
