"""The synthetic scene generator: exact ground truth, deterministic, and a shift that shows."""

from __future__ import annotations

import numpy as np

from fleet.retrain.synthetic.scenes import CLASSES, SceneStyle, make_dataset, make_scene


def test_boxes_are_tight_around_the_drawn_shapes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        style = SceneStyle(sensor_noise=0.0, background="stripes")
        image, boxes, classes = make_scene(rng, 128, style, max_objects=1)
        assert boxes.shape == (1, 4) and 0 <= classes[0] < len(CLASSES)
        x1, y1, x2, y2 = boxes[0].astype(int)
        assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
        # Shapes are very dark or very bright: the box's centre pixel is the shape's colour,
        # and the shape touches all four sides of its box (to within anti-aliasing).
        centre = image[(y1 + y2) // 2, (x1 + x2) // 2].astype(int)
        assert centre.max() <= 60 or centre.min() >= 200


def test_same_seed_same_dataset_and_coco_ids():
    a_images, a_gt = make_dataset(5, seed=3)
    b_images, b_gt = make_dataset(5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(a_images, b_images, strict=True))
    assert a_gt == b_gt
    assert [img["id"] for img in a_gt["images"]] == [1, 2, 3, 4, 5]
    assert {c["name"] for c in a_gt["categories"]} == set(CLASSES)
    assert all(a["bbox"][2] > 0 and a["bbox"][3] > 0 for a in a_gt["annotations"])


def test_the_shift_changes_lighting_and_background():
    base, _ = make_dataset(30, seed=4, style=SceneStyle.base())
    shifted, _ = make_dataset(30, seed=4, style=SceneStyle.shifted())
    assert np.mean(shifted) < 0.6 * np.mean(base)
    assert np.std(shifted) < 0.6 * np.std(base)
