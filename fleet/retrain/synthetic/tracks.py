"""Multi-object tracking sequences with exact ground truth, for measuring trackers (bench/tracking.py, tests).

Procedural and seeded like scenes.py, but in time and without pixels: a tracker only sees detections, so a
sequence is the true boxes of every object in every frame plus what a simulated detector reports for them.

A `Scene` is people-shaped boxes walking the floor of a 768x576 frame (vtest.avi's size; far is small, near is
big), simulated at 30 fps: each walks in straight legs with a new heading and speed every few seconds, sometimes
stops for a while, crosses and occludes the others (nearer boxes hide farther ones), walks out of the frame and,
more often than not, comes back in where it left with the same identity; new people keep entering so the head
count stays near `objects`. `detect(scene, fps, noise, seed)` samples it at 5, 10 or 30 fps and runs the detector
model `DetectorNoise` on each sampled frame: box jitter, random misses, whole frames lost, misses and weaker
scores under occlusion, false positives at random places and a flickering "clutter" object that never moves,
and noisy scores cut at the detector's threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASE_FPS = 30
WIDTH, HEIGHT = 768, 576
FLOOR_TOP = 0.3 * HEIGHT  # anchors (feet) stay below this line


@dataclass(frozen=True)
class DetectorNoise:
    jitter: float = 0.05  # std of each box edge as a fraction of the box's width (x) or height (y)
    miss_rate: float = 0.1  # chance a fully visible object is not detected in a frame
    frame_drop: float = 0.02  # chance a whole frame comes back empty (a decoder hiccup, motion blur)
    false_positives: float = 0.4  # mean false detections per frame at random places
    clutter: int = 1  # false objects that stay in one place and flicker (a poster, a coat on a hook)
    score_noise: float = 0.08  # std of the score around the object's own score
    score_floor: float = 0.35  # the detector's threshold (NanoDet's manifest: 0.35)


@dataclass
class Scene:
    """Ground truth at BASE_FPS: per frame the ids, boxes (x1 y1 x2 y2, clipped to the frame), visibility."""

    name: str
    ids: list[np.ndarray]
    boxes: list[np.ndarray]
    visibility: list[np.ndarray]
    strength: dict[int, float]  # how sure the detector is of each object when fully visible
    clutter: np.ndarray  # (C, 4) boxes of static false objects

    @property
    def frames(self) -> int:
        return len(self.ids)


@dataclass
class Sequence:
    """A scene sampled at `fps` with the detector's output (boxes (N, 4) x1 y1 x2 y2 and scores (N,), float32,
    one class); frame k is at time k / fps."""

    name: str
    fps: float
    gt_ids: list[np.ndarray]
    gt_boxes: list[np.ndarray]
    det_boxes: list[np.ndarray]
    det_scores: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.det_boxes)

    def time(self, k: int) -> float:
        return k / self.fps


@dataclass
class _Walker:
    oid: int
    x: float
    y: float  # anchor: bottom centre
    scale: float
    heading: float
    speed: float
    leg_left: float  # seconds until the next heading/speed/stop
    away: float = -1.0  # > 0: out of the frame for this many more seconds (then comes back)
    stopped: bool = False


def _size(y: float, scale: float) -> tuple[float, float]:
    h = (50 + 150 * y / HEIGHT) * scale
    return 0.4 * h, h


def _box(w: _Walker) -> np.ndarray:
    bw, bh = _size(w.y, w.scale)
    return np.array([w.x - bw / 2, w.y - bh, w.x + bw / 2, w.y])


def _new_leg(w: _Walker, rng: np.random.Generator) -> None:
    w.leg_left = float(rng.uniform(1.0, 4.0))
    w.stopped = bool(rng.random() < 0.15)
    w.heading += float(rng.normal(0, 0.7))
    w.speed = float(rng.uniform(25, 100))  # px/s: slow strollers to brisk walkers


def _enter(oid: int, rng: np.random.Generator) -> _Walker:
    """A new person stepping in from the left, right or bottom edge, heading inwards."""
    edge = int(rng.integers(0, 3))
    if edge == 2:
        x, y, heading = float(rng.uniform(50, WIDTH - 50)), HEIGHT - 1.0, -np.pi / 2
    else:
        x = 1.0 if edge == 0 else WIDTH - 1.0
        y, heading = float(rng.uniform(FLOOR_TOP + 20, HEIGHT - 20)), 0.0 if edge == 0 else np.pi
    w = _Walker(oid, x, y, float(rng.uniform(0.85, 1.15)), heading + float(rng.normal(0, 0.4)), 0.0, 0.0)
    _new_leg(w, rng)
    w.stopped = False
    return w


def _visibility(boxes: np.ndarray) -> np.ndarray:
    """Fraction of each box not covered by nearer boxes (nearer = lower on screen). Overlaps of occluders with
    each other are counted twice, so heavy crowding reads a little more occluded than it is."""
    n = len(boxes)
    vis = np.ones(n)
    if n < 2:
        return vis
    ix = np.clip(np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1]), 0, None)
    inter = ix * iy
    nearer = boxes[None, :, 3] > boxes[:, None, 3]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    covered = (inter * nearer).sum(axis=1) / np.maximum(area, 1e-9)
    return np.clip(1 - covered, 0, 1)


def make_scene(seed: int, objects: int = 10, seconds: float = 20.0, return_rate: float = 0.6) -> Scene:
    """Simulate `seconds` of `objects` people (on average) walking, at BASE_FPS."""
    rng = np.random.default_rng(seed)
    dt = 1.0 / BASE_FPS
    walkers: list[_Walker] = []
    next_id = 0
    for _ in range(objects):  # start with the floor already populated
        w = _enter(next_id, rng)
        w.x, w.y = float(rng.uniform(40, WIDTH - 40)), float(rng.uniform(FLOOR_TOP + 20, HEIGHT - 20))
        walkers.append(w)
        next_id += 1
    strength = {w.oid: float(rng.uniform(0.55, 0.95)) for w in walkers}
    clutter = np.array([_box(_Walker(-1, float(rng.uniform(60, WIDTH - 60)), float(rng.uniform(FLOOR_TOP, HEIGHT - 60)),
                                     1.0, 0, 0, 0))])
    ids, boxes, vis = [], [], []
    for _ in range(int(round(seconds * BASE_FPS))):
        present = [w for w in walkers if w.away <= 0]
        if len(present) < objects and rng.random() < 0.5 * dt * max(1, objects - len(present)):
            w = _enter(next_id, rng)
            walkers.append(w)
            strength[w.oid] = float(rng.uniform(0.55, 0.95))
            next_id += 1
        for w in list(walkers):
            if w.away > 0:  # out of the frame; comes back where it left, walking in
                w.away -= dt
                if w.away <= 0:
                    w.heading += np.pi
                    w.x, w.y = float(np.clip(w.x, 1, WIDTH - 1)), float(np.clip(w.y, FLOOR_TOP + 5, HEIGHT - 1))
                    _new_leg(w, rng)
                    w.stopped = False
                continue
            w.leg_left -= dt
            if w.leg_left <= 0:
                _new_leg(w, rng)
            if not w.stopped:
                w.x += w.speed * np.cos(w.heading) * dt
                w.y += w.speed * np.sin(w.heading) * dt
            if w.y < FLOOR_TOP:  # the far wall: turn back
                w.y, w.heading = FLOOR_TOP, -w.heading
            if not (0 <= w.x <= WIDTH and w.y <= HEIGHT):
                if rng.random() < return_rate:
                    w.away = float(rng.uniform(0.5, 3.0))
                else:
                    walkers.remove(w)
        present = [w for w in walkers if w.away <= 0]
        b = np.array([_box(w) for w in present]).reshape(-1, 4)
        b = np.clip(b, 0, [WIDTH, HEIGHT, WIDTH, HEIGHT])
        keep = ((b[:, 2] - b[:, 0]) > 4) & ((b[:, 3] - b[:, 1]) > 4)
        ids.append(np.array([w.oid for w in present], np.int64)[keep])
        boxes.append(b[keep])
        vis.append(_visibility(b[keep]))
    return Scene(f"walk-{seed}", ids, boxes, vis, strength, clutter)


def detect(scene: Scene, fps: float, noise: DetectorNoise | None = None, seed: int = 0) -> Sequence:
    """Sample `scene` at `fps` (a divisor of BASE_FPS) and run the simulated detector on each frame."""
    noise = noise or DetectorNoise()
    step = BASE_FPS / fps
    if step != int(step) or step < 1:
        raise ValueError(f"fps must divide {BASE_FPS} (got {fps})")
    rng = np.random.default_rng([seed, int(fps)])
    gt_ids, gt_boxes, det_boxes, det_scores = [], [], [], []
    for f in range(0, scene.frames, int(step)):
        ids, boxes, vis = scene.ids[f], scene.boxes[f], scene.visibility[f]
        gt_ids.append(ids)
        gt_boxes.append(boxes)
        if rng.random() < noise.frame_drop:
            det_boxes.append(np.zeros((0, 4), np.float32))
            det_scores.append(np.zeros(0, np.float32))
            continue
        # Seen with full probability when at least 70 % visible, never under 20 %.
        p_seen = (1 - noise.miss_rate) * np.clip((vis - 0.2) / 0.5, 0, 1)
        seen = rng.random(len(ids)) < p_seen
        strength = np.array([scene.strength[int(i)] for i in ids])
        scores = strength * (0.6 + 0.4 * vis) + rng.normal(0, noise.score_noise, len(ids))
        wh = np.c_[boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]]
        out = boxes + rng.normal(0, noise.jitter, (len(ids), 4)) * np.c_[wh, wh]
        out, scores = out[seen], scores[seen]
        n_fp = int(rng.poisson(noise.false_positives))
        fp = []
        for _ in range(n_fp):
            x, y = rng.uniform(30, WIDTH - 30), rng.uniform(FLOOR_TOP, HEIGHT)
            bw, bh = _size(y, rng.uniform(0.6, 1.2))
            fp.append([x - bw / 2, y - bh, x + bw / 2, y])
        for c in scene.clutter[: noise.clutter]:
            if rng.random() < 0.5:
                wh_c = np.r_[c[2] - c[0], c[3] - c[1]]
                fp.append(c + rng.normal(0, noise.jitter, 4) * np.r_[wh_c, wh_c])
        fp_scores = rng.uniform(noise.score_floor, 0.75, len(fp))
        out = np.concatenate([out, np.array(fp).reshape(-1, 4)])
        scores = np.concatenate([scores, fp_scores])
        keep = scores >= noise.score_floor
        order = rng.permutation(int(keep.sum()))  # the detector reports in no particular order
        det_boxes.append(out[keep][order].astype(np.float32))
        det_scores.append(np.clip(scores[keep][order], 0, 1).astype(np.float32))
    return Sequence(f"{scene.name}@{fps:g}fps", float(fps), gt_ids, gt_boxes, det_boxes, det_scores)
