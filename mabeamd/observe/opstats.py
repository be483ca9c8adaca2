"""Requests by op and result code, and how long they took: counted where they are served.

Each endpoint that answers requests (the agent endpoint, each worker's shard endpoint, the
control socket) keeps one `OpStats` and calls `observe` once per final reply. A scrape turns
them into `mabeamd_requests_total` and `mabeamd_request_duration_seconds` (metrics.py);
a worker's travel to the arbiter in its heartbeat as `snapshot()` (plain lists, msgpack).

Why not prometheus_client's Counter and Histogram on the request path: a labelled
observation there takes a lock and a labels() lookup per call, and a worker's objects would
still have to cross the link as plain data. Here an observation is two dict updates and a
bisect (docs/benchmarks.md, "metrics on/off").

Bounded labels: an op the endpoint does not serve is counted as "other", a code that is not
one of the wire's error codes (or "ok") as "other", so nothing from outside can add series.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Container
from typing import Any

from mabeamd.net.wire import ErrorCode

# Upper bounds in seconds: 100 µs (a one-hop get on an idle machine) to 10 s (a control
# command that waits on a worker restart); +Inf is the last bucket.
BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                              0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OK = "ok"
OTHER = "other"
CODES = frozenset(v for k, v in vars(ErrorCode).items() if k.isupper()) | {OK}


class OpStats:
    """Counts by (op, code) and a latency histogram by op."""

    __slots__ = ("_by_op", "_known")

    def __init__(self, known: Container[str]) -> None:
        # `known`: the ops this endpoint serves (a live container: the agent endpoint's
        # handler map fills after construction).
        self._known = known
        # op -> ([count per bucket (len(BUCKETS) + 1, the last +Inf), sum of seconds],
        #        {code: count}); one lookup per observation, labels checked when first seen
        self._by_op: dict[str, tuple[list[float], dict[str, int]]] = {}

    def observe(self, op: Any, code: str, seconds: float) -> None:
        entry = self._by_op.get(op)
        if entry is None:
            entry = self._entry(op)
        h, codes = entry
        h[bisect_left(BUCKETS, seconds)] += 1
        h[-1] += seconds
        n = codes.get(code)
        if n is None:
            if code not in CODES:
                code = OTHER
            n = codes.get(code, 0)
        codes[code] = n + 1

    def _entry(self, op: Any) -> tuple[list[float], dict[str, int]]:
        if op not in self._known:
            op = OTHER  # only known ops become keys: an attacker's ops add nothing
        entry = self._by_op.get(op)
        if entry is None:
            entry = self._by_op[op] = ([0] * (len(BUCKETS) + 2), {})
        return entry

    def snapshot(self) -> dict[str, Any]:
        """Plain data (msgpack, JSON): {"codes": [[op, code, n], ...],
        "hist": {op: [per-bucket counts..., sum]}}; `from_snapshot` reads it back."""
        return {"codes": [[op, code, n] for (op, code), n in sorted(self.codes().items())],
                "hist": {op: list(h) for op, (h, _) in sorted(self._by_op.items())}}

    def codes(self) -> dict[tuple[str, str], int]:
        return {(op, code): n for op, (_, codes) in self._by_op.items()
                for code, n in codes.items()}

    def histograms(self) -> dict[str, tuple[list[int], float]]:
        """op -> (cumulative counts per bucket, the last being +Inf, i.e. the total; sum)."""
        return {op: cumulative(h) for op, (h, _) in self._by_op.items()}

    @classmethod
    def from_snapshot(cls, snap: Any) -> OpStats:
        """An OpStats holding a worker's snapshot, as far as it is well formed (a worker
        is ours, but a malformed heartbeat must not break a scrape)."""
        stats = cls(_Anything())
        if not isinstance(snap, dict):
            return stats
        for row in snap.get("codes") or []:
            if (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                    and isinstance(row[1], str) and type(row[2]) is int):
                stats._entry(row[0])[1][row[1]] = row[2]
        hist = snap.get("hist")
        for op, h in (hist.items() if isinstance(hist, dict) else ()):
            if isinstance(op, str) and raw_histogram(h, BUCKETS) is not None:
                stats._entry(op)[0][:] = h
        return stats


class _Anything:
    def __contains__(self, item: object) -> bool:
        return True


# Sessions run from milliseconds (a vote of agents on this host) to the deadline's maximum.
SESSION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                                      5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Histograms:
    """Histograms by one label whose values the owner bounds (e.g. installed protocols)."""

    __slots__ = ("_by_label", "buckets")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self._by_label: dict[str, list[float]] = {}

    def observe(self, label: str, value: float) -> None:
        h = self._by_label.get(label)
        if h is None:
            h = self._by_label[label] = [0] * (len(self.buckets) + 2)
        h[bisect_left(self.buckets, value)] += 1
        h[-1] += value

    def histograms(self) -> dict[str, tuple[list[int], float]]:
        """As OpStats.histograms: label -> (cumulative counts, the last +Inf; sum)."""
        return {label: cumulative(h) for label, h in self._by_label.items()}


def raw_histogram(h: Any, bounds: tuple[float, ...]) -> list[float] | None:
    """`h` when it has the shape a worker ships for `bounds` -- [count per bound, count
    past the last (+Inf), sum], all numbers -- else None (a malformed heartbeat must not
    break a scrape)."""
    if (isinstance(h, list) and len(h) == len(bounds) + 2
            and all(isinstance(x, (int, float)) for x in h)):
        return h
    return None


def cumulative(h: list[float]) -> tuple[list[int], float]:
    """[count per bucket..., sum] -> (cumulative counts, the last +Inf; sum)."""
    running, out = 0, []
    for n in h[:-1]:
        running += int(n)
        out.append(running)
    return out, float(h[-1])
