"""`edgecv review demo`: a newcomer gets a real queue in one command, filled by the app's own flagged items."""

from __future__ import annotations

import re

import pytest
import requests

from fleet.review.demo import fill_review_demo

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_demo_fills_the_queue_from_a_real_pipeline_run(tmp_path):
    lines: list[str] = []
    demo = fill_review_demo(tmp_path / "review", seconds=12, say=lines.append)
    try:
        # The app's review client sent low-confidence samples; its alerts came as evidence packages with clips.
        assert demo.queued.get("low_confidence", 0) + demo.queued.get("random", 0) > 0, (demo.queued, lines)
        assert demo.queued.get("alert", 0) > 0, (demo.queued, lines)
        http = requests.Session()
        token = re.search(r'name="csrf-token" content="([^"]+)"', http.get(f"{demo.url}/login").text).group(1)
        r = http.post(f"{demo.url}/login", data={"username": demo.username, "password": demo.password,
                                                  "csrf_token": token, "next": "/review"})
        assert r.status_code == 200 and 'id="item-data"' in r.text  # signed in, reviewing the first item
        assert '"reason": "alert"' in r.text and "/clip" in r.text  # alerts first, with their clip
        assert demo.login_line().startswith(f"open {demo.url}/login")
    finally:
        demo.stop()
