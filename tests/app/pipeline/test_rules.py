"""Rules: zones, directed lines, dwell, class and score filters, cooldowns, event fields, config errors."""

import uuid

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from app.metrics import Metrics
from app.pipeline.geometry import points_in_polygon, segments_cross_line, side_of_line
from app.pipeline.rules import Line, Rule, RuleEngine, RulesConfig, Zone, uuid7
from app.pipeline.types import Detections

CLASSES = ["person", "bicycle", "car"]
SQUARE = Zone(name="dock", polygon=[(100, 100), (300, 100), (300, 300), (100, 300)])
HLINE = Line(name="gate", points=((100, 200), (300, 200)))  # drawn left to right: side A above, B below
rule = TypeAdapter(Rule).validate_python


def engine(*rules, zones=(SQUARE,), lines=(HLINE,), metrics=None) -> RuleEngine:
    return RuleEngine(
        [rule(r) for r in rules], zones, lines, CLASSES, "site-a", "dev-1", "cam-1", "nanodet@1.0.0", metrics=metrics
    )


def tracked(*objs: tuple[int, float, float, str, float]) -> Detections:
    """(track id, anchor x, anchor y, class name, score) -> detections whose bottom-centre is the anchor."""
    if not objs:
        return Detections.empty()
    tid, x, y = (np.array([o[i] for o in objs], np.float64) for i in range(3))
    boxes = np.stack([x - 10, y - 40, x + 10, y], axis=1).astype(np.float32)
    return Detections(
        boxes,
        np.array([o[4] for o in objs], np.float32),
        np.array([CLASSES.index(o[3]) for o in objs], np.int32),
        tid.astype(np.int64),
    )


def run(eng: RuleEngine, path: list[tuple[float, float]], tid=7, cls="person", score=0.9, dt=0.1, t0=1000.0):
    """Feed one track along `path`; returns all events."""
    events = []
    for k, (x, y) in enumerate(path):
        events += eng.process(tracked((tid, x, y, cls, score)), t0 + k * dt, frame_seq=k)
    return events


# --- geometry ----------------------------------------------------------------------------------------


def test_point_in_polygon_concave_and_vectorised():
    u_shape = np.array([(0, 0), (30, 0), (30, 30), (20, 30), (20, 10), (10, 10), (10, 30), (0, 30)])
    pts = np.array([(5, 5), (15, 20), (25, 25), (35, 5), (15, 5)])
    assert points_in_polygon(pts, u_shape).tolist() == [True, False, True, False, True]


def test_sides_and_segment_crossing():
    a, b = np.array([0, 0]), np.array([10, 0])  # horizontal, left to right
    assert side_of_line(np.array([(5, -3), (5, 3), (5, 0)]), a, b).tolist() == [-1, 1, 0]
    p0 = np.array([(5, -3), (15, -3), (5, -3)])
    p1 = np.array([(5, 3), (15, 3), (6, -1)])
    assert segments_cross_line(p0, p1, a, b).tolist() == [True, False, False]  # through, beyond the end, no


# --- zone intrusion ----------------------------------------------------------------------------------


def test_zone_intrusion_fires_on_entry_with_full_event_fields():
    eng = engine({"name": "dock-in", "kind": "zone_intrusion", "zone": "dock", "cooldown_s": 30})
    events = run(eng, [(50, 200), (90, 200), (150, 200), (160, 200)])
    assert len(events) == 1
    e = events[0]
    assert (e.rule, e.kind, e.class_name, e.track_id, e.frame_seq) == ("dock-in", "zone_intrusion", "person", 7, 2)
    assert (e.site_id, e.device_id, e.camera_id, e.model) == ("site-a", "dev-1", "cam-1", "nanodet@1.0.0")
    assert e.time == pytest.approx(1000.2) and e.box == pytest.approx((140, 160, 160, 200))
    assert e.extra == {"zone": "dock"}
    assert uuid.UUID(e.event_id).version == 7
    payload = e.to_payload()
    assert payload["event_id"] == e.event_id and payload["class"] == "person"


def test_cooldown_limits_events_per_track_not_across_tracks():
    eng = engine({"name": "dock-in", "kind": "zone_intrusion", "zone": "dock", "cooldown_s": 1.0})
    events = run(eng, [(150, 200)] * 25, dt=0.1)  # 2.4 s inside
    assert [round(e.time - 1000, 1) for e in events] == [0.0, 1.0, 2.0]
    other = eng.process(tracked((8, 150, 200, "person", 0.9)), 1002.5)
    assert [e.track_id for e in other] == [8]


def test_class_filter_min_score_and_unconfirmed_tracks():
    eng = engine({"name": "cars", "kind": "zone_intrusion", "zone": "dock", "classes": ["car"], "min_score": 0.6})
    assert run(eng, [(150, 200)], cls="person") == []
    assert run(eng, [(150, 200)], tid=2, cls="car", score=0.5) == []
    assert run(eng, [(150, 200)], tid=-1, cls="car", score=0.9) == []  # tentative track
    assert [e.class_name for e in run(eng, [(150, 200)], tid=3, cls="car", score=0.6)] == ["car"]


# --- line crossing -----------------------------------------------------------------------------------

DOWN = [(200, 150), (200, 190), (200, 210), (200, 250)]  # above (side A) to below (side B)
UP = DOWN[::-1]


@pytest.mark.parametrize(
    "direction, path, fires",
    [("a_to_b", DOWN, True), ("a_to_b", UP, False), ("b_to_a", UP, True), ("b_to_a", DOWN, False), ("any", UP, True)],
)
def test_line_crossing_direction(direction, path, fires):
    eng = engine({"name": "gate", "kind": "line_crossing", "line": "gate", "direction": direction})
    events = run(eng, path)
    assert len(events) == (1 if fires else 0)
    if fires:
        went = "a_to_b" if path == DOWN else "b_to_a"
        assert events[0].extra == {"line": "gate", "direction": went} and events[0].frame_seq == 2


def test_vertical_line_sides_match_the_documentation():
    # drawn top to bottom: side A is on the right of the image, side B on the left
    vline = Line(name="v", points=((200, 0), (200, 400)))
    eng = engine({"name": "in", "kind": "line_crossing", "line": "v", "direction": "a_to_b"}, lines=(vline,))
    assert len(run(eng, [(250, 100), (150, 100)])) == 1  # right to left
    assert len(run(eng, [(150, 100), (250, 100)], tid=8)) == 0


def test_passing_beyond_the_segment_end_or_standing_on_it_does_not_fire_twice():
    eng = engine({"name": "gate", "kind": "line_crossing", "line": "gate", "cooldown_s": 0})
    assert run(eng, [(350, 150), (350, 250)]) == []  # the line ends at x=300
    jitter = [(200, 190), (200, 200), (200, 200), (200, 210), (200, 200), (200, 211)]
    assert len(run(eng, jitter, tid=9)) == 1  # stops on the line, goes on: one crossing
    assert len(run(eng, [(200, 250), (200, 150), (200, 250)], tid=10, t0=2000)) == 2  # there and back


def test_line_cooldown():
    eng = engine({"name": "gate", "kind": "line_crossing", "line": "gate", "cooldown_s": 5})
    back_and_forth = [(200, 150), (200, 250)] * 4
    assert len(run(eng, back_and_forth, dt=1.0)) == 2  # at t=1 and t=6; the crossings between fall in the cooldown


# --- dwell -------------------------------------------------------------------------------------------


def test_dwell_fires_after_the_time_and_restarts_on_leaving():
    eng = engine({"name": "loiter", "kind": "dwell", "zone": "dock", "dwell_s": 2.0, "cooldown_s": 100})
    t = 1000.0
    inside, outside = tracked((5, 150, 200, "person", 0.9)), tracked((5, 50, 200, "person", 0.9))
    assert eng.process(inside, t) == []
    assert eng.process(inside, t + 1.5) == []
    assert eng.process(outside, t + 1.8) == []  # left: the clock restarts
    assert eng.process(inside, t + 2.0) == []
    assert eng.process(Detections.empty(), t + 3.0) == []  # not seen for a frame: the clock keeps running
    events = eng.process(inside, t + 4.0)
    assert [(e.kind, e.extra) for e in events] == [("dwell", {"zone": "dock", "dwell_s": 2.0})]
    assert eng.process(inside, t + 5.0) == []  # cooldown


def test_events_are_counted_in_metrics_and_ids_are_unique():
    m = Metrics()
    eng = engine({"name": "dock-in", "kind": "zone_intrusion", "zone": "dock", "cooldown_s": 0}, metrics=m)
    events = run(eng, [(150, 200)] * 50, dt=0.001)
    assert m.registry.get_sample_value("edgecv_events_total", {"rule": "dock-in"}) == 50
    assert len({e.event_id for e in events}) == 50
    assert sorted(e.event_id for e in events)[0][:8] == uuid7(1000.0)[:8]  # time-ordered prefix


# --- re-identification: one object, two track ids ----------------------------------------------------


def feed(eng: RuleEngine, frames: list[tuple[int, float, float]], dt=0.1, t0=1000.0):
    """One object per frame as (track id, anchor x, anchor y); returns all events."""
    events = []
    for k, (tid, x, y) in enumerate(frames):
        events += eng.process(tracked((tid, x, y, "person", 0.9)), t0 + k * dt, frame_seq=k)
    return events


def test_an_id_switch_on_the_line_does_not_fire_the_crossing_again():
    eng = engine({"name": "gate", "kind": "line_crossing", "line": "gate", "direction": "any", "cooldown_s": 30})
    # Track 7 crosses downwards (fires); the tracker then re-identifies the object as track 8 while it stands
    # on the line, its anchor wobbling across it.
    frames = [(7, 200, 150), (7, 200, 190), (7, 200, 205), (8, 200, 196), (8, 200, 204), (8, 200, 197), (8, 200, 230)]
    events = feed(eng, frames)
    assert [(e.track_id, e.extra["direction"]) for e in events] == [(7, "a_to_b")]


def test_a_crossing_repeated_by_a_new_id_at_the_same_spot_is_not_counted_without_a_cooldown():
    eng = engine({"name": "gate", "kind": "line_crossing", "line": "gate", "direction": "a_to_b", "cooldown_s": 0})
    # The new id's first box lags behind on side A, then crosses again where track 7 crossed.
    frames = [(7, 200, 150), (7, 200, 190), (7, 200, 210), (8, 205, 192), (8, 205, 212), (8, 205, 240)]
    assert [e.track_id for e in feed(eng, frames)] == [7]


def test_two_people_crossing_side_by_side_or_later_at_the_same_spot_both_count():
    eng = engine({"name": "gate", "kind": "line_crossing", "line": "gate", "direction": "a_to_b", "cooldown_s": 0})
    events = []
    for k, y in enumerate((150, 190, 210, 240)):  # both seen in every frame: two objects
        events += eng.process(tracked((7, 200, y, "person", 0.9), (8, 215, y + 2, "person", 0.9)), 1000 + k * 0.1)
    assert sorted(e.track_id for e in events) == [7, 8]
    later = feed(eng, [(9, 200, 150), (9, 200, 190), (9, 200, 210)], t0=1005.0)  # well after reid_s
    assert [e.track_id for e in later] == [9]


def test_an_id_switch_inside_a_dwell_zone_keeps_the_clock_and_the_cooldown():
    eng = engine({"name": "loiter", "kind": "dwell", "zone": "dock", "dwell_s": 2.0, "cooldown_s": 100})
    frames = [(5, 150, 200)] * 30 + [(6, 152, 201)] * 70  # 10 s standing still; the id changes at 3 s
    events = feed(eng, frames)
    assert [(e.track_id, round(e.time - 1000, 1)) for e in events] == [(5, 2.0)]
    # Someone else, far from where track 6 vanished, gets a clock of their own.
    other = feed(eng, [(11, 260, 140)] * 25, t0=1010.0)
    assert [(e.track_id, round(e.time - 1010, 1)) for e in other] == [(11, 2.0)]


def test_a_new_id_long_after_or_of_another_class_takes_over_nothing():
    eng = engine({"name": "loiter", "kind": "dwell", "zone": "dock", "dwell_s": 2.0, "cooldown_s": 100})
    assert len(feed(eng, [(5, 150, 200)] * 25)) == 1
    assert len(feed(eng, [(6, 150, 200)] * 25, t0=1005.0)) == 1  # gone 2.6 s: a new visit
    car = [eng.process(tracked((7, 150, 200, "car", 0.9)), 1008.0 + k * 0.1) for k in range(25)]
    assert sum(len(e) for e in car) == 1


# --- config errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"zones": [{"name": "z", "polygon": [[0, 0], [1, 1]]}]}, "at least 3"),
        ({"zones": [{"name": "z", "polygon": [[0, 0], [1, 1], [2, 2]]}]}, "zero area"),
        ({"lines": [{"name": "l", "points": [[1, 1], [1, 1]]}]}, "must differ"),
        ({"zones": [{"name": "z", "polygon": [[0, 0], [0, 9], [9, 0]], "colour": "red"}]}, "colour"),
        ({"rules": [{"name": "r", "kind": "zone_intrusion", "zone": "nope"}]}, "unknown zone 'nope'"),
        ({"rules": [{"name": "r", "kind": "line_crossing", "line": "l"}]}, "unknown line 'l'"),
        ({"rules": [{"name": "r", "kind": "teleport"}]}, "kind"),
        ({"rules": [{"name": "r", "kind": "dwell", "zone": "z"}]}, "dwell_s"),
        ({"lines": [{"name": "l", "points": [[0, 0], [1, 1]]}] * 2}, "duplicate line names: l"),
        (
            {
                "lines": [{"name": "l", "points": [[0, 0], [1, 1]]}],
                "rules": [{"name": "r", "kind": "line_crossing", "line": "l", "direction": "up"}],
            },
            "direction",
        ),
    ],
)
def test_bad_rules_config_names_the_field(doc, message):
    with pytest.raises(ValidationError, match=message):
        RulesConfig.model_validate(doc)


def test_unknown_class_names_the_rule():
    with pytest.raises(ValueError, match=r"rule 'r'.*unknown classes \['truck'\]"):
        engine({"name": "r", "kind": "zone_intrusion", "zone": "dock", "classes": ["truck"]})


def test_engine_from_a_yaml_style_config():
    cfg = RulesConfig.model_validate(
        {
            "zones": [{"name": "dock", "polygon": [[100, 100], [300, 100], [300, 300], [100, 300]]}],
            "rules": [{"name": "in", "kind": "zone_intrusion", "zone": "dock", "classes": ["bicycle"]}],
        }
    )
    eng = RuleEngine.from_config(cfg, CLASSES, site_id="s", device_id="d", camera_id="c", model_ref="m@1")
    assert [e.class_name for e in run(eng, [(50, 200), (150, 200)], cls="bicycle")] == ["bicycle"]
