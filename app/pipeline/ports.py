"""What the pipeline loop talks to at its two ends: frame sources (cameras) and sinks (alerts, evidence,
review). Small protocols, so the loop iterates its sinks instead of asking each collaborator what it can do.

A source (app.pipeline.capture.CameraReader, or a benchmark's synthetic camera) runs its own thread and
keeps its newest frame for `take()`; `watch()` is its stall watchdog, called by the loop a few times a
second. A sink gets every handled frame; it must not block the loop (queue, or spool, and return), and
`close()` flushes what it holds within the time it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.pipeline.types import Detections, Event, Frame


class FrameSource(Protocol):
    camera_id: str
    up: bool  # delivering frames now
    last_error: str | None  # why not, when not
    on_frame: Callable[[], None] | None  # called after each new frame (wakes the loop)

    def start(self) -> object: ...

    def stop(self, timeout: float | None = None) -> None: ...

    def take(self) -> Frame | None: ...

    def watch(self) -> bool: ...

    @property
    def alive(self) -> bool: ...


@dataclass(slots=True)
class Handled:
    """One frame through inference, tracking and rules: what every sink receives."""

    frame: Frame
    detections: Detections  # every detection of the frame (tracked or not)
    tracked: Detections  # the tracker's confirmed tracks
    events: list[Event] = field(default_factory=list)
    drift_alarming: bool = False


class FrameSink(Protocol):
    name: str

    def handle(self, item: Handled) -> None: ...

    def close(self, timeout_s: float) -> None: ...
