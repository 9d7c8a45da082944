"""Tracker: id stability through crossings, misses and long occlusions at any frame rate, expiry, ByteTrack's
low-score stage, duplicate boxes, classes; and quality against the reference ByteTrack on ground truth."""

import numpy as np
import pytest
from pydantic import ValidationError

from app.pipeline.tracker import Tracker, TrackerConfig
from app.pipeline.types import Detections

FPS = 10.0


def dets(*objs: tuple[float, float, float, int]) -> Detections:
    """Detections from (centre x, centre y, score, class) with 40x80 boxes."""
    if not objs:
        return Detections.empty()
    a = np.array(objs, np.float64)
    boxes = np.stack([a[:, 0] - 20, a[:, 1] - 40, a[:, 0] + 20, a[:, 1] + 40], axis=1)
    return Detections(boxes.astype(np.float32), a[:, 2].astype(np.float32), a[:, 3].astype(np.int32))


def ids_by_x(out: Detections) -> dict[float, int]:
    return {round(float(b[0] + b[2]) / 2): int(i) for b, i in zip(out.boxes, out.track_ids, strict=True)}


def test_new_tracks_confirm_after_min_hits_with_increasing_ids():
    trk = Tracker(TrackerConfig(min_hits=2))
    first = trk.update(dets((100, 100, 0.9, 0), (300, 100, 0.9, 0)), 0.0)
    assert first.track_ids.tolist() == [-1, -1]  # tentative
    second = trk.update(dets((102, 100, 0.9, 0), (302, 100, 0.9, 0)), 0.1)
    assert sorted(second.track_ids.tolist()) == [0, 1]
    third = trk.update(dets((104, 100, 0.9, 0), (304, 100, 0.9, 0), (600, 300, 0.9, 0)), 0.2)
    third = trk.update(dets((106, 100, 0.9, 0), (306, 100, 0.9, 0), (602, 300, 0.9, 0)), 0.3)
    assert ids_by_x(third) == {106: ids_by_x(second)[102], 306: ids_by_x(second)[302], 602: 2}


def test_two_objects_crossing_paths_keep_their_ids():
    trk = Tracker(TrackerConfig(min_hits=1))
    seen_a, seen_b = set(), set()
    for k in range(40):  # A walks right, B walks left; their boxes overlap heavily mid-way
        t = k / FPS
        xa, xb = 100 + 10 * k, 490 - 10 * k
        out = trk.update(dets((xa, 200, 0.9, 0), (xb, 206, 0.85, 0)), t)
        assert len(out) == 2
        by_y = {round(float(b[3]) - 40): int(i) for b, i in zip(out.boxes, out.track_ids, strict=True)}
        seen_a.add(by_y[200])
        seen_b.add(by_y[206])
    assert seen_a == {0} and seen_b == {1}


def test_missed_frames_keep_the_id_and_prediction_follows_motion():
    trk = Tracker(TrackerConfig(min_hits=1, max_age_s=1.0))
    k = 0
    for k in range(5):
        out = trk.update(dets((100 + 15 * k, 200, 0.9, 0)), k / FPS)
    (tid,) = out.track_ids
    for k in range(5, 10):  # five frames with nothing detected (occlusion); the object keeps moving
        assert len(trk.update(dets(), k / FPS)) == 0
    out = trk.update(dets((100 + 15 * 10, 200, 0.9, 0)), 10 / FPS)  # 75 px from the last seen box
    assert out.track_ids.tolist() == [tid]
    assert trk.history(tid).shape == (6, 3)
    assert trk.history(tid)[-1, 1] == pytest.approx(250)  # anchors: t, bottom-centre x, y


def test_tracks_expire_after_max_age_seconds():
    trk = Tracker(TrackerConfig(min_hits=1, max_age_s=0.5))
    trk.update(dets((100, 200, 0.9, 0)), 0.0)
    trk.update(dets(), 0.4)
    assert len(trk.tracks) == 1
    trk.update(dets(), 0.6)
    assert trk.tracks == []
    out = trk.update(dets((100, 200, 0.9, 0)), 0.7)
    assert out.track_ids.tolist() == [1]  # a new id, never a reused one
    assert trk.history(0).shape == (0, 3)


def test_tracks_expire_after_max_age_frames():
    trk = Tracker(TrackerConfig(min_hits=1, max_age_s=None, max_age_frames=3))
    trk.update(dets((100, 200, 0.9, 0)), 0.0)
    for k in range(1, 4):
        trk.update(dets(), float(k))  # seconds apart: only the frame count matters
    assert len(trk.tracks) == 1
    trk.update(dets(), 4.0)
    assert trk.tracks == []


def test_low_score_detections_keep_a_track_but_never_start_one():
    trk = Tracker(TrackerConfig(min_hits=1, high_score=0.5, low_score=0.1))
    trk.update(dets((100, 200, 0.9, 0)), 0.0)
    for k in range(1, 6):  # partly occluded: the detector is unsure
        out = trk.update(dets((100 + 2 * k, 200, 0.3, 0)), k / FPS)
        assert out.track_ids.tolist() == [0]
    alone = Tracker(TrackerConfig(min_hits=1))
    assert len(alone.update(dets((100, 200, 0.3, 0)), 0.0)) == 0
    assert alone.tracks == []
    # below low_score a detection is ignored altogether
    assert len(trk.update(dets((110, 200, 0.05, 0)), 0.6)) == 0


def test_a_detection_of_another_class_does_not_take_over_a_track():
    trk = Tracker(TrackerConfig(min_hits=1))
    trk.update(dets((100, 200, 0.9, 0)), 0.0)
    out = trk.update(dets((100, 200, 0.9, 2)), 0.1)  # same place, other class
    assert out.track_ids.tolist() == [1]
    assert sorted(tr.class_id for tr in trk.tracks) == [0, 2]


def test_tentative_track_missing_a_frame_is_dropped():
    trk = Tracker(TrackerConfig(min_hits=3))
    trk.update(dets((100, 200, 0.9, 0)), 0.0)
    trk.update(dets(), 0.1)
    assert trk.tracks == []


@pytest.mark.parametrize("fps", [5.0, 10.0, 30.0])
def test_a_walker_hidden_for_two_seconds_gets_its_id_back_at_any_frame_rate(fps):
    """The Kalman filter carries the walk through the occlusion (in seconds, not frames), and the lost track,
    kept for max_age_s, is re-activated instead of a new id being given."""
    rng = np.random.default_rng(int(fps))
    trk = Tracker()  # the defaults
    ids = set()
    for k in range(int(5 * fps)):
        t = k / fps
        if 1.5 <= t < 3.5:  # behind a pillar
            trk.update(dets(), t)
            continue
        x = 100 + 60 * t + rng.normal(0, 2)  # 60 px/s with jittered boxes
        out = trk.update(dets((x, 200 + rng.normal(0, 2), 0.8, 0)), t)
        ids.update(int(i) for i in out.track_ids if i >= 0)
    assert ids == {0}


def test_a_second_box_on_a_tracked_object_starts_no_track():
    trk = Tracker(TrackerConfig(min_hits=1))
    trk.update(dets((100, 200, 0.9, 0)), 0.0)
    out = trk.update(dets((102, 200, 0.9, 0), (108, 204, 0.8, 0)), 0.1)  # the detector's NMS let a twin through
    assert out.track_ids.tolist() == [0]
    assert len(trk.tracks) == 1
    apart = trk.update(dets((104, 200, 0.9, 0), (180, 200, 0.8, 0)), 0.2)  # a real second object
    assert apart.track_ids.tolist() == [0, 1]


def test_fewer_id_switches_than_the_reference_bytetrack_on_synthetic_ground_truth():
    """Six short sequences (two held-out scenes at 5, 10 and 30 fps) from bench/tracking.py's generator, scored
    with trackers.eval: ours at least as good as trackers' ByteTrack on HOTA and IDF1, with no more ID switches
    and no more ids. (The tracker before the Kalman filter lost on all four here: 59.0/71.5/59/132 against
    61.2/77.0/46/117.)"""
    from bench.tracking import evaluate_synthetic, synthetic_set

    result = evaluate_synthetic(synthetic_set(seeds=(2, 3), seconds=10.0))["all"]
    ours, ref = result["ours"], result["reference"]
    assert ours["HOTA"] >= ref["HOTA"] and ours["IDF1"] >= ref["IDF1"], (ours, ref)
    assert ours["IDSW"] <= ref["IDSW"] and ours["ids"] <= ref["ids"], (ours, ref)


def test_time_must_not_go_backwards():
    trk = Tracker()
    trk.update(dets(), 1.0)
    with pytest.raises(ValueError, match="backwards"):
        trk.update(dets(), 0.5)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"max_age": 3}, "Extra inputs"),
        ({"low_score": 0.6, "high_score": 0.5}, "low_score"),
        ({"max_age_s": None}, "max_age_s or max_age_frames"),
        ({"min_hits": 0}, "min_hits"),
    ],
)
def test_bad_config_is_rejected_with_the_field_named(bad, message):
    with pytest.raises(ValidationError, match=message):
        TrackerConfig(**bad)
