"""The cross-camera batcher: a batch goes when full or when its oldest frame reaches the deadline."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.pipeline.batcher import Batcher


def test_full_batch_is_due_at_once():
    b = Batcher(max_batch=3, max_delay_s=1.0)
    for i, t in enumerate((0.0, 0.01, 0.02)):
        assert not b.due(now=t)
        assert b.add(f"f{i}", now=t) == i
    assert b.full and b.due(now=0.02) and b.time_left(now=0.02) == 0.0
    batch = b.take(now=0.05)
    assert [x.item for x in batch] == ["f0", "f1", "f2"]
    assert [round(x.waited, 3) for x in batch] == [0.05, 0.04, 0.03]
    assert len(b) == 0 and b.time_left(now=0.05) is None


def test_deadline_counts_from_the_oldest_frame():
    b = Batcher(max_batch=8, max_delay_s=0.020)
    b.add("a", now=10.000)
    b.add("b", now=10.015)
    assert b.time_left(now=10.015) == pytest.approx(0.005)
    assert not b.due(now=10.0199)
    assert b.due(now=10.020)
    assert [x.item for x in b.take(now=10.020)] == ["a", "b"]
    # The next batch's clock starts with its own first frame.
    b.add("c", now=10.030)
    assert not b.due(now=10.040) and b.due(now=10.050)


def test_batch_of_one_and_zero_delay():
    b = Batcher(max_batch=1, max_delay_s=0.5)
    b.add("x", now=0.0)
    assert b.due(now=0.0)
    with pytest.raises(OverflowError, match="full"):
        b.add("y", now=0.0)
    z = Batcher(max_batch=4, max_delay_s=0.0)
    z.add("x", now=1.0)
    assert z.due(now=1.0)


@pytest.mark.parametrize("kwargs", [{"max_batch": 0, "max_delay_s": 0.01}, {"max_batch": 2, "max_delay_s": -1}])
def test_bad_settings_rejected(kwargs):
    with pytest.raises(ValueError):
        Batcher(**kwargs)


def test_uses_its_clock_when_no_time_given():
    now = [100.0]
    b = Batcher(max_batch=4, max_delay_s=0.1, clock=lambda: now[0])
    b.add("a")
    now[0] = 100.05
    assert not b.due()
    now[0] = 100.1
    assert b.due() and b.take()[0].waited == pytest.approx(0.1)


@settings(max_examples=200, deadline=None)
@given(
    max_batch=st.integers(1, 8),
    delay=st.floats(0.0, 0.1),
    gaps=st.lists(st.floats(0.0, 0.05), min_size=1, max_size=60),
)
def test_no_frame_waits_past_the_deadline_when_polled(max_batch, delay, gaps):
    """Driving it like the pipeline does (poll at each arrival and at each deadline), no frame waits longer
    than max_delay, no batch exceeds max_batch, and every frame goes out exactly once, in order."""
    b = Batcher(max_batch=max_batch, max_delay_s=delay)
    out, t = [], 0.0
    for i, gap in enumerate(gaps):
        left = b.time_left(now=t)
        if left is not None and t + left <= t + gap:  # the deadline falls before the next arrival
            out.append(b.take(now=t + left))
        t += gap
        b.add(i, now=t)
        if b.due(now=t):
            out.append(b.take(now=t))
    out.append(b.take(now=t))
    items = [x.item for batch in out for x in batch]
    assert items == list(range(len(gaps)))
    assert all(len(batch) <= max_batch for batch in out)
    assert all(x.waited <= delay + 1e-9 for batch in out for x in batch)
