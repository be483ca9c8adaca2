"""The anomaly band (pure) and the p95 read from histogram buckets."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from mabeamd.observe.anomaly import MIN_LATENCY_SAMPLES, Band, p95_of
from mabeamd.observe.opstats import BUCKETS


def band(**kw: float) -> Band:
    args = {"alpha": 0.1, "sigmas": 4.0, "warmup": 12, "floor": 2.0, "relative": 0.5}
    args.update(kw)
    return Band(**args)  # type: ignore[arg-type]


def test_steady_noise_never_fires() -> None:
    rng = random.Random(7)
    b = band()
    changes = [b.update(rng.gauss(100, 8)) for _ in range(5000)]
    assert not any(changes)


def test_a_burst_fires_once_and_clears() -> None:
    b = band()
    for _ in range(30):
        assert b.update(0.0) is None
    assert b.update(500.0) == "entered"
    assert b.update(600.0) is None  # still out: no second alarm
    assert b.active
    changes = [b.update(0.0) for _ in range(50)]
    assert changes.count("cleared") == 1 and "entered" not in changes
    assert not b.active


def test_nothing_fires_during_warmup_and_low_only_where_asked() -> None:
    b = band(warmup=10)
    assert [b.update(x) for x in (0, 1000, 0, 1000, 0, 1000, 0, 1000, 0)] == [None] * 9
    high_only = band(directions=("high",))
    for _ in range(20):
        high_only.update(100.0)
    assert high_only.update(0.0) is None
    both = band()
    for _ in range(20):
        both.update(100.0)
    assert both.update(0.0) == "entered"


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200))
def test_the_band_is_never_narrower_than_its_floors(xs: list[float]) -> None:
    b = band(floor=3.0, relative=0.25)
    for x in xs:
        b.update(x)
        assert b.limit() >= 3.0 and b.limit() >= 0.25 * abs(b.mean) - 1e-9
        assert b.var >= -1e-6


def test_p95_from_cumulative_buckets() -> None:
    n = len(BUCKETS) + 1
    assert p95_of([0] * n) is None
    few = [MIN_LATENCY_SAMPLES - 1] * n
    assert p95_of(few) is None
    # 100 requests: 90 within the first bound, 96 within the fourth, all within the fifth
    counts = [90, 90, 90, 96] + [100] * (n - 4)
    assert p95_of(counts) == BUCKETS[3]
    slow = [0] * (n - 1) + [100]  # all past the largest bound
    assert p95_of(slow) == BUCKETS[-1]


def test_a_lasting_new_level_is_learnt_afresh() -> None:
    b = band(warmup=5)
    for _ in range(20):
        b.update(10.0)
    changes = [b.update(1000.0) for _ in range(5)]
    assert changes == ["entered", None, None, None, "cleared"]
    assert b.mean == 1000.0 and not b.active
    assert not any(b.update(1000.0) for _ in range(20))  # the new normal
