"""Progress against the daily quota, reviewer throughput, and the correction rate for the drift monitor.

Definitions (shown on the throughput page too):
- an item counts for the reviewer who decided it, on the UTC day it was first decided;
- seconds per item: from the claim to the decision (items decided without a claim are left out);
- items/hour: items decided in the window / the time from the first claim to the last decision;
- correction rate: items whose model output needed a change (corrected or rejected) / items reviewed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet.review.models import Item, Reviewer
from fleet.review.queue import DONE


def day_start(now: float) -> float:
    d = datetime.fromtimestamp(now, UTC)
    return d.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


@dataclass
class Progress:
    done: int
    quota: int

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.done / self.quota)) if self.quota else 100


def progress(s: Session, reviewer: Reviewer, now: float) -> Progress:
    done = s.scalar(select(func.count()).select_from(Item).where(
        Item.reviewed_by == reviewer.id, Item.reviewed_at >= day_start(now), Item.status == DONE))
    return Progress(int(done or 0), reviewer.daily_quota)


@dataclass
class Throughput:
    reviewer: str
    items: int
    items_per_hour: float | None
    median_seconds: float | None
    decisions: dict[str, int]


def throughput(s: Session, since: float, now: float) -> list[Throughput]:
    """Per reviewer, over the items decided in [since, now]."""
    rows = s.execute(
        select(Reviewer.username, Item.reviewed_at, Item.review_seconds, Item.decision)
        .join(Reviewer, Reviewer.id == Item.reviewed_by)
        .where(Item.status == DONE, Item.reviewed_at >= since, Item.reviewed_at <= now)
        .order_by(Reviewer.username, Item.reviewed_at)).all()
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(r.username, []).append(r)
    out = []
    for name, rs in by.items():
        secs = [r.review_seconds for r in rs if r.review_seconds is not None]
        start = min(r.reviewed_at - (r.review_seconds or 0.0) for r in rs)
        span_h = max(rs[-1].reviewed_at - start, 60.0) / 3600.0  # at least a minute: no absurd rates
        decisions: dict[str, int] = {}
        for r in rs:
            decisions[r.decision] = decisions.get(r.decision, 0) + 1
        out.append(Throughput(name, len(rs), round(len(rs) / span_h, 1),
                              round(statistics.median(secs), 2) if secs else None, decisions))
    return out


def correction_rate(s: Session, since: float, until: float, model: str | None = None, site: str | None = None,
                    device: str | None = None, camera: str | None = None) -> dict:
    where = [Item.status == DONE, Item.reviewed_at > since, Item.reviewed_at <= until]
    for col, v in (("model", model), ("site", site), ("device", device), ("camera", camera)):
        if v:
            where.append(getattr(Item, col) == v)
    counts = dict(s.execute(select(Item.decision, func.count()).where(*where).group_by(Item.decision)).all())
    reviewed = sum(counts.values())
    corrected = counts.get("corrected", 0) + counts.get("rejected", 0)
    return {
        "since": since, "until": until, "reviewed": reviewed, "corrected": corrected,
        "rate": round(corrected / reviewed, 4) if reviewed else None,
        "by_decision": {d: counts.get(d, 0) for d in ("approved", "corrected", "rejected")},
        "filters": {k: v for k, v in (("model", model), ("site", site), ("device", device), ("camera", camera)) if v},
    }
