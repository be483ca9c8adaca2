"""Token buckets for the agent endpoint and the shard endpoints (`[limits]`).

Two kinds of bucket, each with a request rate and a byte rate and a burst for each: one per
connection (a ROUTER peer) and one per agent id (the agent a request acts for, once it is
proven to be the caller's). A request is admitted only if every bucket it is charged to has
room; a refused request is charged to none of them, so an agent that backs off as told
(`retry_after`) gets exactly the configured rate, and one that hammers gets no worse than
that either.

Why one number per bucket: a token bucket of `burst` tokens refilled at `rate` per second is
the same as remembering `tat`, the moment it will be full again (the "generic cell rate
algorithm" form). A request costing c tokens fits when max(tat, now) + c/rate <= now +
burst/rate, and then moves tat there; when it does not fit, the difference is how long to
wait. That is two float operations and no refill bookkeeping, and a bucket whose tat has
passed is full -- indistinguishable from one never seen, so it can be forgotten without
changing any decision.

Why the memory stays bounded, whatever ids or connections an attacker rotates through:

- buckets are kept in order of last charge (an OrderedDict: move_to_end is O(1)), and every
  new bucket first drops up to two full ones from the front. A charge leaves tat at most
  burst/rate ahead, so a bucket charged longer ago than that is full: the table holds the
  keys charged within the last burst/rate seconds, plus a shrinking tail;
- at most `max_tracked` buckets per table. A new key beyond that shares one overflow bucket
  with every other such key: a flood of fresh ids is throttled as a whole, at one bucket's
  rate, and existing buckets are never evicted (evicting them would hand their owners a
  fresh burst).

Agent buckets are not dropped when the agent says bye: bye + hello would then refill it.
They go when full, like any other.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any, Final

from mabeamd.net.wire import ErrorCode, WireError

DROP_PER_INSERT: Final = 2  # full buckets dropped before a new one is added (see above)
# Seconds of float rounding forgiven: now + step - now - slack is not exactly 0 when a
# request uses the last token, and a fresh bucket of burst 1 must admit its first request.
TOLERANCE: Final = 1e-9


class Table:
    """The buckets of one kind (per connection, or per agent). A rate of 0 turns that
    dimension off. Costs are in requests (always 1) and bytes."""

    __slots__ = ("_byte_slack", "_byte_step", "_slack", "_step", "buckets", "burst",
                 "byte_burst", "byte_rate", "label", "max_tracked", "overflow", "rate",
                 "refusals")

    def __init__(self, label: str, rate: float, burst: float, byte_rate: float,
                 byte_burst: float, *, max_tracked: int) -> None:
        self.label = label
        self.rate, self.burst = rate, burst
        self.byte_rate, self.byte_burst = byte_rate, byte_burst
        self.max_tracked = max(1, max_tracked)
        # Seconds of the bucket one request (one byte) uses, and how far tat may run ahead
        # of now: burst/rate. Zero for a dimension that is off.
        self._step = 1.0 / rate if rate > 0 else 0.0
        self._slack = burst / rate if rate > 0 else 0.0
        self._byte_step = 1.0 / byte_rate if byte_rate > 0 else 0.0
        self._byte_slack = byte_burst / byte_rate if byte_rate > 0 else 0.0
        # key -> [request tat, byte tat], least recently charged first.
        self.buckets: OrderedDict[Hashable, list[float]] = OrderedDict()
        self.overflow = [0.0, 0.0]  # shared by new keys while the table is full
        # (message, limit name) per dimension, made once: a flood is mostly refusals, so
        # their cost is what a flood costs (retry_after, which varies, is in the body).
        self.refusals = {
            which: (f"rate limit: {label} {which} ({r:g}/s, burst {b:g}) spent; wait "
                    "retry_after seconds", f"{label}_{which}")
            for which, r, b in (("requests", rate, burst), ("bytes", byte_rate, byte_burst))}

    def __len__(self) -> int:
        return len(self.buckets)

    def slot(self, key: Hashable, now: float) -> list[float] | None:
        """The key's bucket; None for a key not tracked (its bucket is full); the shared
        overflow bucket for a new key when the table is full."""
        st = self.buckets.get(key)
        if st is None and len(self.buckets) >= self.max_tracked:
            self.sweep(now)
            if len(self.buckets) >= self.max_tracked:
                return self.overflow
        return st

    # The hot path (every admitted request) is wait() and charge(): conditional
    # expressions, not max() (a builtin call costs several times more), and a dimension
    # that is off has step and slack 0, so it yields 0 (fits) without a branch.

    def wait(self, st: list[float] | None, nbytes: int, now: float) -> float:
        """Seconds until a request of nbytes fits in the bucket `st` (from slot()); at most
        TOLERANCE: it fits now."""
        if st is None:
            req = by = now
        else:
            req = st[0] if st[0] > now else now
            by = st[1] if st[1] > now else now
        w = req + self._step - now - self._slack
        wb = by + nbytes * self._byte_step - now - self._byte_slack
        return wb if wb > w else w

    def which(self, st: list[float] | None, nbytes: int, now: float) -> str:
        """For a refusal: "bytes" when the byte bucket is what lacks the room (it makes
        the wait), else "requests"."""
        if not self._byte_step:
            return "requests"
        t = st[1] if st is not None and st[1] > now else now
        wb = t + nbytes * self._byte_step - now - self._byte_slack
        return "bytes" if wb >= self.wait(st, nbytes, now) else "requests"

    def charge(self, key: Hashable, st: list[float] | None, nbytes: int, now: float) -> None:
        """Take a request of nbytes from the key's bucket (`st` from slot())."""
        if st is None:
            if self.buckets:
                self._drop_full(now, DROP_PER_INSERT)
            st = self.buckets[key] = [now, now]
        elif st is not self.overflow:
            self.buckets.move_to_end(key)
        t = st[0]
        st[0] = (t if t > now else now) + self._step
        t = st[1]
        st[1] = (t if t > now else now) + nbytes * self._byte_step

    def sweep(self, now: float) -> int:
        """Drop every full bucket at the front (all of them, see the module docstring)."""
        return self._drop_full(now, len(self.buckets))

    def _drop_full(self, now: float, most: int) -> int:
        buckets, dropped = self.buckets, 0
        while dropped < most and buckets:
            key = next(iter(buckets))
            st = buckets[key]
            if st[0] > now or st[1] > now:
                break  # charged within its slack: so is everything behind it
            del buckets[key]
            dropped += 1
        return dropped


class Limits:
    """One endpoint's limits: a per-connection table and a per-agent table, either None
    when all its rates are 0. Build with `build`; None there means no limits at all, which
    is what the endpoints test for (one attribute check per request when off)."""

    __slots__ = ("agent", "conn", "counts_bytes", "settings")

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.conn = _table("connection", self.settings)
        self.agent = _table("agent", self.settings)
        # Whether callers need to measure the request at all.
        self.counts_bytes = bool(settings["connection_bytes"] or settings["agent_bytes"])

    def admit(self, conn: Hashable, agent: str | None, nbytes: int, now: float) -> None:
        """Charge a request to its connection's bucket and, when `agent` is given (the
        caller must have proven it acts for that agent), to the agent's; or raise
        `rate_limited` with `retry_after` and charge neither."""
        ct, at = self.conn, self.agent
        if at is None:
            agent = None
        cs = ast = None
        worst, table = TOLERANCE, None
        if ct is not None:
            cs = ct.buckets.get(conn)
            if cs is None:
                cs = ct.slot(conn, now)
            w = ct.wait(cs, nbytes, now)
            if w > worst:
                worst, table, st = w, ct, cs
        if agent is not None:
            assert at is not None
            ast = at.buckets.get(agent)
            if ast is None:
                ast = at.slot(agent, now)
            w = at.wait(ast, nbytes, now)
            if w > worst:
                worst, table, st = w, at, ast
        if table is not None:
            message, limit = table.refusals[table.which(st, nbytes, now)]
            # Rounded up to the millisecond: a client that waits exactly this long fits
            # (unless others charged the same agent meanwhile).
            retry = math.ceil(worst * 1000.0) / 1000.0
            raise WireError(ErrorCode.RATE_LIMITED, message,
                            details={"retry_after": retry, "limit": limit})
        if ct is not None:
            ct.charge(conn, cs, nbytes, now)
        if agent is not None:
            assert at is not None
            at.charge(agent, ast, nbytes, now)

    def tracked(self) -> dict[str, int]:
        """Buckets held now, per table (for status)."""
        return {"connections": len(self.conn) if self.conn is not None else 0,
                "agents": len(self.agent) if self.agent is not None else 0}


def _table(kind: str, s: Mapping[str, Any]) -> Table | None:
    """The `kind` ("connection", "agent") table of [limits] `s`; None when it is off."""
    rate, byte_rate = float(s[f"{kind}_requests"]), float(s[f"{kind}_bytes"])
    if rate <= 0 and byte_rate <= 0:
        return None
    return Table(kind, rate, float(s[f"{kind}_requests_burst"]), byte_rate,
                 float(s[f"{kind}_bytes_burst"]), max_tracked=int(s["max_tracked"]))


def build(settings: Mapping[str, Any]) -> Limits | None:
    """The limits for `[limits]` (its options as a map, as the worker gets them), or None
    when every rate is 0."""
    limits = Limits(settings)
    return limits if limits.conn is not None or limits.agent is not None else None
