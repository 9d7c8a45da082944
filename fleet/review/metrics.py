"""Prometheus metrics of the review service (all named edgecv_review_*), on the app's own registry.

Counters and histograms are kept in the process; the queue depth, throughput and correction rate
are read from the database at scrape time, so they are right whichever server process answers.
No metric names a reviewer: per-person figures are on the signed-in throughput page, not on /metrics.
"""

from __future__ import annotations

import statistics

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from fleet.review.db import Database
from fleet.review.models import Item
from fleet.review.stats import correction_rate, day_start, throughput

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5)
ITEM_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 55, 90, 150, 300, 600)


class ReviewMetrics:
    def __init__(self, db: Database, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.decisions = Counter("edgecv_review_decisions_total", "Decisions, per action", ["action"], registry=r)
        self.item_seconds = Histogram("edgecv_review_item_seconds", "Seconds from claim to decision, per action",
                                      ["action"], buckets=ITEM_BUCKETS, registry=r)
        self.ingested = Counter("edgecv_review_ingested_total", "Items ingested, per reason (new ones only)",
                                ["reason"], registry=r)
        self.duplicates = Counter("edgecv_review_ingest_duplicates_total", "Items sent again (ignored)",
                                  registry=r)
        self.rejected_input = Counter("edgecv_review_bad_requests_total", "Requests refused for bad input",
                                      ["route"], registry=r)
        self.logins = Counter("edgecv_review_logins_total", "Login attempts, by result", ["result"], registry=r)
        self.request_seconds = Histogram("edgecv_review_request_seconds", "Server-side request latency",
                                         ["method", "route"], buckets=REQUEST_BUCKETS, registry=r)
        r.register(_DatabaseCollector(db))


class _DatabaseCollector(Collector):
    def __init__(self, db: Database):
        self.db = db

    def collect(self):
        now = self.db.now()
        queue = GaugeMetricFamily("edgecv_review_queue_items", "Pending items, per reason and claim state",
                                  labels=["reason", "state"])
        per_hour = GaugeMetricFamily("edgecv_review_items_per_hour",
                                     "Items per hour today (UTC), summed over active reviewers")
        reviewers = GaugeMetricFamily("edgecv_review_active_reviewers", "Reviewers who decided an item today (UTC)")
        median = GaugeMetricFamily("edgecv_review_median_seconds_per_item",
                                   "Median over reviewers of their median seconds per item today (UTC)")
        done = GaugeMetricFamily("edgecv_review_items_done_today", "Items decided today (UTC)")
        rate = GaugeMetricFamily("edgecv_review_correction_rate",
                                 "Corrected or rejected per reviewed item, last 24 h")
        with self.db.read() as s:
            claimed = Item.claimed_by.is_not(None)
            for reason, is_claimed, n in s.execute(
                    select(Item.reason, claimed, func.count()).where(Item.status == "pending")
                    .group_by(Item.reason, claimed)):
                queue.add_metric([reason, "claimed" if is_claimed else "free"], n)
            today = throughput(s, day_start(now), now)
            cr = correction_rate(s, now - 86400, now)
        done.add_metric([], sum(t.items for t in today))
        reviewers.add_metric([], len(today))
        per_hour.add_metric([], sum(t.items_per_hour or 0.0 for t in today))
        medians = [t.median_seconds for t in today if t.median_seconds is not None]
        if medians:
            median.add_metric([], statistics.median(medians))
        if cr["rate"] is not None:
            rate.add_metric([], cr["rate"])
        yield from (queue, per_hour, reviewers, median, done, rate)
