"""The tracking sequence generator: deterministic, one truth at every frame rate, and the hard cases present."""

from __future__ import annotations

import numpy as np
import pytest

from fleet.retrain.synthetic.tracks import BASE_FPS, HEIGHT, WIDTH, DetectorNoise, detect, make_scene


def test_scenes_are_deterministic_and_frame_rates_sample_one_truth():
    a, b = make_scene(3, objects=8, seconds=6), make_scene(3, objects=8, seconds=6)
    assert a.frames == 6 * BASE_FPS
    assert all(np.array_equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
    s10, s30 = detect(a, 10, seed=1), detect(a, 30, seed=1)
    assert len(s10) == 60 and len(s30) == 180
    for k in range(len(s10)):  # frame k at 10 fps is frame 3k at 30 fps
        assert np.array_equal(s10.gt_ids[k], s30.gt_ids[3 * k])
        assert np.array_equal(s10.gt_boxes[k], s30.gt_boxes[3 * k])
    with pytest.raises(ValueError, match="divide"):
        detect(a, 7)


def test_people_occlude_each_other_stop_and_come_back_with_their_id():
    scene = make_scene(0, objects=10, seconds=20)
    boxes = np.concatenate(scene.boxes)
    assert (boxes[:, [0, 1]] >= 0).all() and (boxes[:, 2] <= WIDTH).all() and (boxes[:, 3] <= HEIGHT).all()
    assert min(v.min() for v in scene.visibility if len(v)) < 0.3  # someone is mostly hidden at some point
    track: dict[int, list[tuple[int, float, float]]] = {}  # id -> (frame, anchor x, anchor y)
    for f, (ids, b) in enumerate(zip(scene.ids, scene.boxes, strict=True)):
        for i, box in zip(ids.tolist(), b, strict=True):
            track.setdefault(i, []).append((f, (box[0] + box[2]) / 2, box[3]))
    gaps = [np.diff([p[0] for p in ps]).max() for ps in track.values() if len(ps) > 1]
    assert max(gaps) > BASE_FPS // 2  # someone left the frame and came back under the same id

    def longest_stop(ps) -> int:
        moved = np.abs(np.diff(np.array(ps)[:, 1:], axis=0)).sum(axis=1) > 0
        runs = "".join("m" if m else "s" for m in moved).split("m")
        return max(len(r) for r in runs)

    assert max(longest_stop(ps) for ps in track.values() if len(ps) > 1) >= BASE_FPS  # someone stood still 1 s


def test_the_detector_misses_invents_and_jitters_within_its_threshold():
    scene = make_scene(1, objects=8, seconds=10)
    clean = detect(scene, 10, DetectorNoise(jitter=0, miss_rate=0, frame_drop=0, false_positives=0, clutter=0), seed=2)
    noisy = detect(scene, 10, seed=2)
    n_gt = sum(len(i) for i in noisy.gt_ids)
    n_clean = sum(len(s) for s in clean.det_scores)
    assert n_clean < n_gt  # occluded people are missed even by a perfect detector
    assert sum(len(s) for s in noisy.det_scores) != n_clean
    assert min(s.min() for s in noisy.det_scores if len(s)) >= DetectorNoise().score_floor
    assert any(len(s) == 0 for s, ids in zip(noisy.det_scores, noisy.gt_ids, strict=True) if len(ids))  # lost frames
