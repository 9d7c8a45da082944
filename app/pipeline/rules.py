"""Rules over tracked detections: zone intrusion, line crossing with direction, dwell -> app.pipeline.types.Event.

Config (per camera; unknown keys are rejected; coordinates are frame pixels, y grows downward):

    zones:  [{name: dock, polygon: [[x, y], [x, y], [x, y], ...]}]      # >= 3 points, non-zero area
    lines:  [{name: gate, points: [[xa, ya], [xb, yb]]}]                # two distinct points, a then b
    rules:
      - {name: dock-intrusion, kind: zone_intrusion, zone: dock, classes: [person], min_score: 0.5, cooldown_s: 30}
      - {name: gate-in, kind: line_crossing, line: gate, direction: a_to_b}
      - {name: loitering, kind: dwell, zone: dock, dwell_s: 20}

Where an object is: its anchor, the bottom-centre of its box.

Line sides: looking from point a towards point b *on screen*, side A is on the left and side B on the right.
For a horizontal line drawn left to right (a on the left), side A is above it and side B below it; for a
vertical line drawn top to bottom, side A is on the right of the image and side B on the left.
`direction: a_to_b` fires when an anchor moves from side A to side B across the segment a-b, `b_to_a` the
reverse, `any` either. Passing beyond the segment's ends is not a crossing. An anchor that stops exactly on
the line keeps the side it came from, so jitter on the line does not fire twice.

Firing: `zone_intrusion` fires while the anchor is inside the zone; `dwell` once the anchor has stayed inside
for dwell_s seconds (leaving the zone restarts the clock; frames where the track is not seen do not);
`line_crossing` on each crossing. Each rule fires at most once per track per cooldown_s seconds.
Only confirmed tracks (track_id >= 0) of the listed classes (all when empty) with score >= min_score count.

Re-identification (line crossings and dwell only): trackers sometimes give one object a new id, and near a line
or in a dwell zone that would count it twice. So a track id seen for the first time takes over the line sides,
dwell clocks and line/dwell cooldowns of a track of its class that vanished at most `reid_s` seconds ago with its
anchor within `reid_radius` box heights of the new one (the nearest such; each vanished track hands over once).
And a crossing of a line in the same direction within `reid_s` seconds and `reid_radius` box heights of a recent
crossing by another track that is no longer seen is the same object crossing again, not a new crossing. The
price: two people crossing at one spot within `reid_s`, the first vanishing at once, count once.

Event ids are UUID version 7 (RFC 9562): 48-bit Unix milliseconds of the event time then 74 random bits,
so they are unique, sort by time, and stay the same when an event is re-sent (consumers de-duplicate on them).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.pipeline.geometry import anchors, points_in_polygon, polygon_area, segments_cross_line, side_of_line
from app.pipeline.types import Detections, Event

Point = tuple[float, float]
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Zone(_Strict):
    name: str = Field(pattern=NAME)
    polygon: list[Point] = Field(min_length=3)

    @field_validator("polygon")
    @classmethod
    def _area(cls, v: list[Point]) -> list[Point]:
        if polygon_area(np.array(v)) <= 0:
            raise ValueError("polygon has zero area (points are collinear or repeated)")
        return v


class Line(_Strict):
    name: str = Field(pattern=NAME)
    points: tuple[Point, Point]

    @field_validator("points")
    @classmethod
    def _distinct(cls, v: tuple[Point, Point]) -> tuple[Point, Point]:
        if v[0] == v[1]:
            raise ValueError("the two points of a line must differ")
        return v


class _Rule(_Strict):
    name: str = Field(pattern=NAME)
    classes: list[str] = Field(default_factory=list, description="class names; empty means every class")
    min_score: float = Field(0.0, ge=0, le=1)
    cooldown_s: float = Field(10.0, ge=0, description="at most one event per track per this many seconds")


class ZoneIntrusionRule(_Rule):
    kind: Literal["zone_intrusion"]
    zone: str


class LineCrossingRule(_Rule):
    kind: Literal["line_crossing"]
    line: str
    direction: Literal["a_to_b", "b_to_a", "any"] = "any"


class DwellRule(_Rule):
    kind: Literal["dwell"]
    zone: str
    dwell_s: float = Field(gt=0)


Rule = Annotated[ZoneIntrusionRule | LineCrossingRule | DwellRule, Field(discriminator="kind")]


class RulesConfig(_Strict):
    """Zones, lines and rules of one camera, with names unique and references checked."""

    zones: list[Zone] = Field(default_factory=list)
    lines: list[Line] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> RulesConfig:
        for what, items in (("zone", self.zones), ("line", self.lines), ("rule", self.rules)):
            names = [i.name for i in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {what} names: {', '.join(dupes)}")
        zones, lines = {z.name for z in self.zones}, {ln.name for ln in self.lines}
        for i, r in enumerate(self.rules):
            if isinstance(r, LineCrossingRule) and r.line not in lines:
                raise ValueError(f"rules[{i}] ({r.name}): unknown line '{r.line}' (lines: {sorted(lines)})")
            if isinstance(r, ZoneIntrusionRule | DwellRule) and r.zone not in zones:
                raise ValueError(f"rules[{i}] ({r.name}): unknown zone '{r.zone}' (zones: {sorted(zones)})")
        return self


def uuid7(t: float) -> str:
    """A UUIDv7 string for Unix time t (seconds)."""
    ms = int(t * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits, 74 used
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


class RuleEngine:
    """Evaluates one camera's rules frame by frame; keeps per-track state (sides, dwell clocks, cooldowns).

    `process(tracked, t, frame_seq)` takes the tracker's output for one frame captured at Unix time t and
    returns the events fired, in rule order then detection order. If `metrics` (app.metrics.Metrics) is
    given, edgecv_events_total{rule} counts them.
    """

    def __init__(
        self,
        rules: Sequence[ZoneIntrusionRule | LineCrossingRule | DwellRule],
        zones: Sequence[Zone],
        lines: Sequence[Line],
        class_names: Sequence[str],
        site_id: str,
        device_id: str,
        camera_id: str,
        model_ref: str,
        metrics=None,
        forget_after_s: float = 60.0,
        reid_s: float = 2.0,
        reid_radius: float = 0.5,
    ):
        cfg = RulesConfig(zones=list(zones), lines=list(lines), rules=list(rules))  # re-checks references
        known = set(class_names)
        for r in cfg.rules:
            unknown = [c for c in r.classes if c not in known]
            if unknown:
                raise ValueError(f"rule '{r.name}': unknown classes {unknown} (the model has: {list(class_names)})")
        self.rules = cfg.rules
        self.zones = {z.name: np.array(z.polygon, np.float64) for z in cfg.zones}
        self.lines = {ln.name: np.array(ln.points, np.float64) for ln in cfg.lines}
        self.class_names = list(class_names)
        self._class_ids = {
            r.name: np.array([self.class_names.index(c) for c in r.classes], np.int64) for r in self.rules
        }
        self.site_id, self.device_id, self.camera_id, self.model_ref = site_id, device_id, camera_id, model_ref
        self.metrics = metrics
        # State that outlives a missed frame but not the track: forgotten when unseen for this long.
        self.forget_after_s = max(forget_after_s, *(r.cooldown_s for r in self.rules), 0.0)
        self._last_seen: dict[int, float] = {}
        self._side: dict[tuple[str, int], tuple[int, np.ndarray]] = {}  # (line, track) -> last non-zero side, point
        self._entered: dict[tuple[str, int], float] = {}  # (dwell rule, track) -> time it entered the zone
        self._fired: dict[tuple[str, int], float] = {}  # (rule, track) -> last event time
        # Re-identification (see the module docstring).
        self.reid_s, self.reid_radius = reid_s, reid_radius
        reid_rules = {r.name for r in self.rules if not isinstance(r, ZoneIntrusionRule)}
        self._handed_over = ((self._side, set(self.lines)), (self._entered, reid_rules), (self._fired, reid_rules))
        self._where: dict[int, tuple[float, float, float, int]] = {}  # track -> last anchor x, y, box height, class
        self._recent: dict[str, list[tuple[float, float, float, float, int, int]]] = {}  # line -> t x y h dir track

    @classmethod
    def from_config(cls, config: RulesConfig, class_names: Sequence[str], **ids) -> RuleEngine:
        """`RuleEngine.from_config(cfg, names, site_id=..., device_id=..., camera_id=..., model_ref=...)`."""
        return cls(config.rules, config.zones, config.lines, class_names, **ids)

    def process(self, tracked: Detections, t: float, frame_seq: int = -1) -> list[Event]:
        confirmed = np.flatnonzero(np.asarray(tracked.track_ids) >= 0)
        dets = tracked.take(confirmed)
        pts = anchors(dets.boxes)
        heights = np.asarray(dets.boxes, np.float64).reshape(-1, 4) @ np.array([0, -1, 0, 1.0])
        ids = [int(i) for i in dets.track_ids]
        classes = [int(c) for c in dets.class_ids]
        self._hand_over(ids, pts, heights, classes, t)
        crossed = {name: self._crossings(name, seg, ids, pts, heights, t) for name, seg in self.lines.items()}
        inside = {name: points_in_polygon(pts, poly) for name, poly in self.zones.items()}

        events: list[Event] = []
        for rule in self.rules:
            eligible = np.asarray(dets.scores) >= rule.min_score
            if rule.classes:
                eligible &= np.isin(dets.class_ids, self._class_ids[rule.name])
            if isinstance(rule, ZoneIntrusionRule):
                hits = eligible & inside[rule.zone]
                extra = {"zone": rule.zone}
            elif isinstance(rule, DwellRule):
                hits = eligible & self._dwelling(rule, ids, inside[rule.zone], t)
                extra = {"zone": rule.zone, "dwell_s": rule.dwell_s}
            else:
                side_change = crossed[rule.line]
                wanted = {"a_to_b": (1,), "b_to_a": (-1,), "any": (1, -1)}[rule.direction]
                hits = eligible & np.isin(side_change, wanted)
                extra = {"line": rule.line}
            for k in np.flatnonzero(hits):
                key = (rule.name, ids[k])
                if key in self._fired and t - self._fired[key] < rule.cooldown_s:
                    continue
                self._fired[key] = t
                if isinstance(rule, LineCrossingRule):
                    extra = {"line": rule.line, "direction": "a_to_b" if crossed[rule.line][k] > 0 else "b_to_a"}
                events.append(self._event(rule, dets, k, t, frame_seq, extra))

        for k, i in enumerate(ids):
            self._last_seen[i] = t
            self._where[i] = (float(pts[k, 0]), float(pts[k, 1]), float(heights[k]), classes[k])
        self._forget(t)
        if self.metrics is not None:
            for e in events:
                self.metrics.events.labels(e.rule).inc()
        return events

    def _hand_over(self, ids: list[int], pts: np.ndarray, heights: np.ndarray, classes: list[int], t: float) -> None:
        """A track seen for the first time near where a track of its class vanished just now is that object:
        it takes over the vanished track's line and dwell state (sides, clocks, cooldowns)."""
        present = set(ids)
        for k, tid in enumerate(ids):
            if tid in self._last_seen:
                continue
            best, best_d = None, np.inf
            for old, seen in self._last_seen.items():
                x, y, h, cls = self._where[old]
                if old in present or cls != classes[k] or not (0 <= t - seen <= self.reid_s):
                    continue
                d = float(np.hypot(pts[k, 0] - x, pts[k, 1] - y))
                if d <= self.reid_radius * max(h, heights[k]) and d < best_d:
                    best, best_d = old, d
            if best is None:
                continue
            for table, names in self._handed_over:
                for name, owner in [key for key in table if key[1] == best and key[0] in names]:
                    table[(name, tid)] = table[(name, owner)]
            present.add(best)  # handed over once

    def _repeat(self, line: str, tid: int, p: np.ndarray, h: float, direction: int, present: set, t: float) -> bool:
        """Whether this crossing repeats a recent one by another, now vanished, track at the same spot (and
        remember it either way)."""
        recent = [c for c in self._recent.get(line, []) if t - c[0] <= self.reid_s]
        repeat = any(
            c[4] == direction and c[5] != tid and c[5] not in present
            and np.hypot(p[0] - c[1], p[1] - c[2]) <= self.reid_radius * max(h, c[3])
            for c in recent
        )
        recent.append((t, float(p[0]), float(p[1]), h, direction, tid))
        self._recent[line] = recent
        return repeat

    def _crossings(
        self, line: str, seg: np.ndarray, ids: list[int], pts: np.ndarray, heights: np.ndarray, t: float
    ) -> np.ndarray:
        """Per detection: +1 crossed from side A to B since its last known side, -1 from B to A, 0 otherwise
        (and 0 for a crossing that repeats another track's, see `_repeat`)."""
        sides = side_of_line(pts, seg[0], seg[1])
        present = set(ids)
        out = np.zeros(len(ids), np.int8)
        prev_pts = np.zeros_like(pts)
        has_prev = np.zeros(len(ids), bool)
        for k, tid in enumerate(ids):
            prev = self._side.get((line, tid))
            if prev is not None:
                has_prev[k], prev_pts[k] = True, prev[1]
        crossing = has_prev & segments_cross_line(prev_pts, pts, seg[0], seg[1])
        for k, tid in enumerate(ids):
            if crossing[k]:
                # Screen side +1 (right of a->b) is side B: moving onto it is a_to_b.
                direction = 1 if sides[k] > 0 else -1
                if not self._repeat(line, tid, pts[k], float(heights[k]), direction, present, t):
                    out[k] = direction
            if sides[k] != 0:
                self._side[(line, tid)] = (int(sides[k]), pts[k].copy())
        return out

    def _dwelling(self, rule: DwellRule, ids: list[int], inside: np.ndarray, t: float) -> np.ndarray:
        out = np.zeros(len(ids), bool)
        for k, tid in enumerate(ids):
            key = (rule.name, tid)
            if not inside[k]:
                self._entered.pop(key, None)
                continue
            entered = self._entered.setdefault(key, t)
            out[k] = t - entered >= rule.dwell_s
        return out

    def _forget(self, t: float) -> None:
        stale = {i for i, seen in self._last_seen.items() if t - seen > self.forget_after_s}
        if not stale:
            return
        for table in (self._side, self._entered, self._fired):
            for key in [k for k in table if k[1] in stale]:
                del table[key]
        for i in stale:
            del self._last_seen[i]
            self._where.pop(i, None)

    def _event(self, rule, dets: Detections, k: int, t: float, frame_seq: int, extra: dict) -> Event:
        class_id = int(dets.class_ids[k])
        name = self.class_names[class_id] if 0 <= class_id < len(self.class_names) else str(class_id)
        return Event(
            event_id=uuid7(t),
            time=t,
            site_id=self.site_id,
            device_id=self.device_id,
            camera_id=self.camera_id,
            rule=rule.name,
            kind=rule.kind,
            class_name=name,
            score=float(dets.scores[k]),
            box=tuple(float(v) for v in dets.boxes[k]),
            track_id=int(dets.track_ids[k]),
            model=self.model_ref,
            frame_seq=int(frame_seq),
            extra=dict(extra),
        )
