"""OpStats: counts and histograms by op, bounded labels, the snapshot a worker ships."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from mabeamd.observe.opstats import BUCKETS, OTHER, OpStats


def test_unknown_ops_and_codes_are_other_and_bounds_are_inclusive() -> None:
    s = OpStats({"var.get"})
    s.observe("var.get", "ok", BUCKETS[0])  # on the bound: le, so the first bucket
    s.observe("var.get", "not_found", 0.3)
    s.observe("made.up." + "x" * 100, "ok", 0.001)
    s.observe(None, "bad_request", 0.001)
    s.observe("var.get", "my_own_code", 0.001)
    assert s.codes() == {("var.get", "ok"): 1, ("var.get", "not_found"): 1,
                         (OTHER, "ok"): 1, (OTHER, "bad_request"): 1,
                         ("var.get", OTHER): 1}
    cumulative, total = s.histograms()["var.get"]
    assert cumulative[0] == 1 and cumulative[-1] == 3
    assert total == BUCKETS[0] + 0.3 + 0.001


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_histogram_matches_a_direct_count(durations: list[float]) -> None:
    s = OpStats({"op"})
    for x in durations:
        s.observe("op", "ok", x)
    if not durations:
        assert s.histograms() == {}
        return
    cumulative, _ = s.histograms()["op"]
    assert cumulative == [sum(1 for x in durations if x <= b) for b in BUCKETS] + [
        len(durations)]


def test_the_snapshot_survives_msgpack_and_junk_is_ignored() -> None:
    s = OpStats({"a"})
    s.observe("a", "ok", 0.002)
    s.observe("a", "busy", 20.0)
    back = OpStats.from_snapshot(msgpack.unpackb(msgpack.packb(s.snapshot())))
    assert back.codes() == s.codes() and back.histograms() == s.histograms()
    for junk in (None, 3, {"codes": [[1, 2, 3], ["a"], "x"], "hist": {"a": [1, 2]}},
                 {"codes": None, "hist": [1]}):
        assert OpStats.from_snapshot(junk).codes() == {}
