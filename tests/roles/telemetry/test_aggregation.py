"""Central aggregation: device metrics and the rules' results arrive at the central Prometheus."""

from __future__ import annotations

import pytest

from fleet.local.prometheus import query, wait_for
from tests.support.telemetry_fixtures import DEVICE, SITE

pytestmark = pytest.mark.integration


def one(url: str, promql: str, timeout: float = 20) -> float:
    result = wait_for(url, promql, timeout)
    assert len(result) == 1, f"{promql}: {result}"
    return float(result[0]["value"][1])


def test_device_metrics_arrive_with_the_agents_labels(stack):
    sel = f'site="{SITE}",device="{DEVICE}",job="edgecv-app"'
    assert one(stack.central_url, f"up{{{sel}}}") == 1
    assert 0 < one(stack.central_url, f"edgecv_device_memory_used_bytes{{{sel}}}") \
        < one(stack.central_url, f"edgecv_device_memory_total_bytes{{{sel}}}")
    assert 0 < one(stack.central_url, f'edgecv_device_disk_used_ratio{{{sel},mount="/"}}') < 1
    # The upstream probe targets the central Prometheus itself: reachable.
    assert one(stack.central_url, f"edgecv_device_net_loss_ratio{{{sel}}}") == 0
    assert 9 <= one(stack.central_url, f'edgecv_camera_fps{{{sel},camera="gate"}}') <= 10
    assert one(stack.central_url, f'edgecv_model_info{{{sel},model="synthetic-shapes"}}') == 1


def test_recording_rules_are_evaluated_centrally(stack):
    # Inference takes 20-60 ms: p95 lands in the 50-75 ms bucket.
    p95 = one(stack.central_url, f'edgecv:stage_latency_seconds:p95{{device="{DEVICE}",stage="inference"}}')
    assert 0.05 <= p95 <= 0.075
    assert one(stack.central_url, f'edgecv:devices_up:count{{site="{SITE}"}}') == 1
    # A rate over 5 minutes of a few seconds of data is small, but it is there and positive.
    assert one(stack.central_url, f'edgecv:frames_processed:rate5m{{device="{DEVICE}"}}') > 0


def test_alerts_are_evaluated_centrally(stack):
    # Camera "dock" is down: pending for its first minute (the rule has for: 1m); "gate" is fine.
    alerts = wait_for(stack.central_url, f'ALERTS{{alertname="EdgecvCameraDown",device="{DEVICE}"}}')
    assert [(a["metric"]["camera"], a["metric"]["alertstate"], a["metric"]["site"]) for a in alerts] == [
        ("dock", "pending", SITE)
    ]
    # Evidence refused fires at once (no for:) once the increase has reached the centre.
    stack.feeder.refuse_evidence()
    firing = wait_for(stack.central_url, f'ALERTS{{alertname="EdgecvEvidenceRefused",alertstate="firing",device="{DEVICE}"}}')
    assert len(firing) == 1 and firing[0]["metric"]["severity"] == "warning"
    # Nothing else is wrong with the pipeline. (Host alerts such as memory growth depend on this machine's
    # real load, so they are left out.)
    healthy = "EdgecvTritonDown|EdgecvFpsBelowTarget|EdgecvQueueGrowing|EdgecvInferenceOverBudget|EdgecvTargetDown"
    assert query(stack.central_url, f'ALERTS{{device="{DEVICE}",alertname=~"{healthy}"}}') == []
