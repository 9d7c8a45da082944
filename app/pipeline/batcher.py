"""Cross-camera batching: a batch goes when it is full or when its oldest frame has waited max_delay_s.

This is the blueprint's batch-size trade-off made a setting: max_batch 1 gives the lowest latency, 8 a
balance, 32 the most throughput; max_delay_s bounds what any frame pays for a fuller batch.
The batcher only keeps times and items; the pipeline preprocesses each frame straight into the batch's
input buffer at index `len(batcher)` before `add`ing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Batched(Generic[T]):
    item: T
    added: float  # clock time it entered the batcher
    waited: float = 0.0  # seconds in the batcher, set by take()


class Batcher(Generic[T]):
    def __init__(self, max_batch: int, max_delay_s: float, clock: Callable[[], float] = time.monotonic):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        self.max_batch, self.max_delay_s, self.clock = max_batch, max_delay_s, clock
        self._items: list[Batched[T]] = []

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.max_batch

    def add(self, item: T, now: float | None = None) -> int:
        """Add an item; returns its index in the batch. Adding to a full batch is an error."""
        if self.full:
            raise OverflowError(f"batch is full ({self.max_batch}); take() it first")
        self._items.append(Batched(item, self.clock() if now is None else now))
        return len(self._items) - 1

    def time_left(self, now: float | None = None) -> float | None:
        """Seconds until the batch is due (0 when due now); None when empty."""
        if not self._items:
            return None
        if self.full:
            return 0.0
        now = self.clock() if now is None else now
        return max(0.0, self._items[0].added + self.max_delay_s - now)

    def due(self, now: float | None = None) -> bool:
        left = self.time_left(now)
        return left is not None and left <= 0.0

    def take(self, now: float | None = None) -> list[Batched[T]]:
        """Empty the batcher; each entry records how long it waited."""
        now = self.clock() if now is None else now
        batch, self._items = self._items, []
        for b in batch:
            b.waited = now - b.added
        return batch
