"""Which frames go to the review queue: low-confidence and random samples, more while drift alarms.

A token bucket caps the flow so a drift storm cannot flood the reviewers.
"""

from __future__ import annotations

import random
import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    low_confidence: tuple[float, float] = Field((0.3, 0.5), description="a detection scored in [lo, hi) is doubtful")
    low_confidence_rate: float = Field(0.02, ge=0, le=1, description="share of doubtful frames sampled normally")
    drift_rate: float = Field(0.25, ge=0, le=1, description="share of doubtful frames sampled while drift alarms")
    random_rate: float = Field(0.001, ge=0, le=1, description="share of all frames sampled at random")
    max_per_minute: float = Field(6.0, gt=0, description="hard cap on flagged frames")
    burst: int = Field(10, ge=1)


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int, clock=time.monotonic):
        self.rate, self.capacity, self.clock = rate_per_s, float(burst), clock
        self.tokens, self.last = float(burst), clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ReviewSampler:
    """`reason(scores, drifting)` -> "low_confidence" | "drift" | "random" | None for one frame."""

    def __init__(self, config: SamplingConfig | None = None, seed: int | None = None, clock=time.monotonic):
        self.config = config or SamplingConfig()
        self.rng = random.Random(seed)
        self.bucket = TokenBucket(self.config.max_per_minute / 60.0, self.config.burst, clock)
        self.refused = 0  # wanted but over the cap

    def reason(self, scores: np.ndarray, drifting: bool) -> str | None:
        lo, hi = self.config.low_confidence
        doubtful = bool(np.any((scores >= lo) & (scores < hi)))
        wanted = None
        if doubtful and self.rng.random() < (self.config.drift_rate if drifting else self.config.low_confidence_rate):
            wanted = "drift" if drifting else "low_confidence"
        elif self.rng.random() < self.config.random_rate:
            wanted = "random"
        if wanted is None:
            return None
        if not self.bucket.take():
            self.refused += 1
            return None
        return wanted
