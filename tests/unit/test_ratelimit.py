"""The token buckets of net/ratelimit.py: never more than rate * t + burst in any window,
a refusal charges nothing and says how long to wait, and memory stays bounded whatever
keys arrive."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mabeamd.config import LimitsSection
from mabeamd.net.ratelimit import TOLERANCE, Limits, Table, build
from mabeamd.net.wire import ErrorCode, WireError

EPS = 1e-6


def limits(**kw: Any) -> Limits:
    built = build(dataclasses.asdict(dataclasses.replace(LimitsSection(), **kw)))
    assert built is not None
    return built


def refused(lim: Limits, conn: Any, agent: str | None, nbytes: int, now: float) -> float | None:
    """retry_after when refused, None when admitted."""
    try:
        lim.admit(conn, agent, nbytes, now)
    except WireError as exc:
        assert exc.code == ErrorCode.RATE_LIMITED
        assert exc.details is not None
        return float(exc.details["retry_after"])
    return None


def test_off_by_default() -> None:
    assert build(dataclasses.asdict(LimitsSection())) is None


def test_burst_then_rate() -> None:
    lim = limits(connection_requests=10.0, connection_requests_burst=5)
    admitted = [refused(lim, "c", None, 0, 100.0) is None for _ in range(7)]
    assert admitted == [True] * 5 + [False] * 2
    # One token comes back every 0.1 s.
    wait = refused(lim, "c", None, 0, 100.0)
    assert wait == pytest.approx(0.1, abs=0.002)
    assert refused(lim, "c", None, 0, 100.0 + wait) is None
    assert refused(lim, "c", None, 0, 100.0 + wait) is not None


def test_a_refusal_charges_nothing_and_names_the_limit() -> None:
    lim = limits(connection_requests=1.0, connection_requests_burst=1)
    assert refused(lim, "c", None, 0, 0.0) is None
    table = lim.conn
    assert table is not None
    before = list(table.buckets["c"])
    for _ in range(100):
        assert refused(lim, "c", None, 0, 0.5) == pytest.approx(0.5, abs=0.002)
    assert table.buckets["c"] == before  # the hammering cost it nothing
    try:
        lim.admit("c", None, 0, 0.5)
    except WireError as exc:
        assert exc.details is not None and exc.details["limit"] == "connection_requests"
        assert "connection requests (1/s, burst 1)" in exc.message


def test_bytes_limit() -> None:
    lim = limits(connection_bytes=1000.0, connection_bytes_burst=3000)
    assert refused(lim, "c", None, 2000, 0.0) is None
    wait = refused(lim, "c", None, 2000, 0.0)  # 1000 bytes left: 1 s until 2000 fit
    assert wait == pytest.approx(1.0, abs=0.002)
    assert refused(lim, "c", None, 1000, 0.0) is None  # a smaller one fits now
    try:
        lim.admit("c", None, 1, 0.0)
    except WireError as exc:
        assert exc.details is not None and exc.details["limit"] == "connection_bytes"


def test_agent_and_connection_are_charged_together_or_not_at_all() -> None:
    lim = limits(connection_requests=100.0, connection_requests_burst=10,
                 agent_requests=1.0, agent_requests_burst=2)
    assert refused(lim, "c1", "alice", 0, 0.0) is None
    assert refused(lim, "c2", "alice", 0, 0.0) is None  # the agent's bucket spans connections
    assert lim.conn is not None and lim.agent is not None
    c1 = list(lim.conn.buckets["c1"])
    assert refused(lim, "c1", "alice", 0, 0.0) is not None
    assert lim.conn.buckets["c1"] == c1  # the connection paid nothing for the refusal
    assert refused(lim, "c1", None, 0, 0.0) is None  # not acting for alice: its own bucket
    assert refused(lim, "c3", "bob", 0, 0.0) is None


def test_idle_buckets_are_forgotten_and_rotating_keys_stay_bounded() -> None:
    lim = limits(connection_requests=10.0, connection_requests_burst=10, max_tracked=1000)
    table = lim.conn
    assert table is not None
    now = 0.0
    for i in range(50_000):  # a new id every millisecond, each spending one token
        now += 0.001
        lim.admit(f"id-{i}", None, 0, now)
        # A bucket is full again 1 s (burst/rate) after its charge: at most ~1000 + 2.
        assert len(table) <= 1002
    held = len(table)
    assert table.sweep(now + 2.0) == held  # all of them full by then
    assert len(table) == 0


def test_beyond_max_tracked_new_keys_share_one_bucket() -> None:
    lim = limits(connection_requests=1.0, connection_requests_burst=3, max_tracked=2)
    assert refused(lim, "a", None, 0, 0.0) is None
    assert refused(lim, "b", None, 0, 0.0) is None
    # The table is full of live buckets: every new key shares the overflow bucket.
    results = [refused(lim, f"new-{i}", None, 0, 0.0) is None for i in range(10)]
    assert results == [True] * 3 + [False] * 7
    assert lim.conn is not None and len(lim.conn) == 2
    # The tracked keys keep their own buckets.
    assert refused(lim, "a", None, 0, 0.0) is None


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 1000.0), burst=st.integers(1, 50),
       steps=st.lists(st.tuples(st.floats(0.0, 0.2), st.integers(1, 5)), min_size=1,
                      max_size=150))
def test_never_more_than_rate_times_t_plus_burst(rate: float, burst: int,
                                                 steps: list[tuple[float, int]]) -> None:
    """For the requests and the bytes dimension alike: in any window [t_i, t_j] of
    admitted requests, the cost admitted is at most rate * (t_j - t_i) + burst."""
    t = Table("connection", rate, float(burst), rate * 10, float(burst * 10), max_tracked=10)
    now, admitted = 0.0, []
    for dt, tries in steps:
        now += dt
        for _ in range(tries):
            nbytes = 1 + (len(admitted) * 7) % 10
            st_ = t.slot("k", now)
            wait = t.wait(st_, nbytes, now)
            if wait <= TOLERANCE:
                t.charge("k", st_, nbytes, now)
                admitted.append((now, nbytes))
    for i in range(len(admitted)):
        total_bytes = 0
        for total_req, j in enumerate(range(i, len(admitted)), start=1):
            total_bytes += admitted[j][1]
            span = admitted[j][0] - admitted[i][0]
            assert total_req <= rate * span + burst + EPS
            assert total_bytes <= rate * 10 * span + burst * 10 + EPS


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(1.0, 500.0), burst=st.integers(1, 20), n=st.integers(1, 60))
def test_waiting_retry_after_is_enough(rate: float, burst: int, n: int) -> None:
    lim = limits(agent_requests=rate, agent_requests_burst=burst)
    now = 10.0
    for _ in range(n):
        wait = refused(lim, "c", "a", 0, now)
        if wait is not None:
            assert wait > 0
            now += wait
            assert refused(lim, "c", "a", 0, now) is None


# --- the agent endpoint and the SDK around the buckets --------------------------------


def endpoint_with(lim: LimitsSection) -> tuple[Any, list[list[bytes]]]:
    """An AgentEndpoint without sockets (its replies are collected), `ping` as the op, agent
    "alice" registered on connection (0, b"A")."""
    import zmq.asyncio

    from mabeamd.agents.endpoint import AgentEndpoint

    sent: list[list[bytes]] = []
    ep = AgentEndpoint(zmq.asyncio.Context.instance(), [], 1 << 20, 64, None)
    ep._send = lambda index, envelope, frames: sent.append(frames) or True  # type: ignore[method-assign]
    ep.handlers["ping"] = lambda req, body: {"pong": True}
    ep.conn_of = lambda agent: (0, b"A") if agent == "alice" else None
    ep.configure_limits(dataclasses.asdict(lim))
    return ep, sent


def codes(sent: list[list[bytes]]) -> list[str]:
    from mabeamd.net import wire

    return [wire.unpack(f[2]).get("code", "ok") if wire.unpack(f[1])["status"] == "error"
            else "ok" for f in sent]


def test_endpoint_charges_an_agent_only_from_its_own_connection() -> None:
    from mabeamd.net import wire

    ep, sent = endpoint_with(LimitsSection(agent_requests=1.0, agent_requests_burst=2))
    ping = wire.encode({"id": 1, "op": "ping"}, {"agent": "alice"})
    for _ in range(5):  # another connection naming alice spends nothing of hers
        ep._handle(0, [b"B", *ping], None)
    assert codes(sent) == ["ok"] * 5
    sent.clear()
    for _ in range(3):
        ep._handle(0, [b"A", *ping], None)
    assert codes(sent) == ["ok", "ok", "rate_limited"]
    assert ep.stats["rate_limited"] == 1 and ep.stats["errors"] == 1
    assert ep.limits is not None and ep.limits.tracked() == {"connections": 0, "agents": 1}
    # The same settings again keep the buckets; other settings start them full.
    ep.configure_limits(dataclasses.asdict(LimitsSection(agent_requests=1.0,
                                                         agent_requests_burst=2)))
    ep._handle(0, [b"A", *ping], None)
    assert codes(sent)[-1] == "rate_limited"
    ep.configure_limits(dataclasses.asdict(LimitsSection()))
    assert ep.limits is None
    ep._handle(0, [b"A", *ping], None)
    assert codes(sent)[-1] == "ok"


def test_sdk_error_for_rate_limited() -> None:
    from mabeamd.client import Busy, RateLimited, error_for

    exc = error_for("rate_limited", "slow down", {"code": "rate_limited", "message": "m",
                                                  "retry_after": 0.25, "limit": "agent_bytes"})
    assert isinstance(exc, RateLimited) and not isinstance(exc, Busy)  # no fallback
    assert (exc.retry_after, exc.limit, exc.code) == (0.25, "agent_bytes", "rate_limited")
    for bad in (None, "soon", True, -1, float("nan")):
        odd = error_for("rate_limited", "m", {"retry_after": bad})
        assert isinstance(odd, RateLimited) and odd.retry_after == 1.0 and odd.limit is None


def test_sdk_heartbeat_refused_is_sent_again_after_retry_after() -> None:
    import asyncio
    import time

    from mabeamd.client import AsyncClient, RateLimited

    async def run() -> list[float]:
        c = AsyncClient("ipc:///nonexistent", heartbeat=False)
        c.registrations = {"a": None}  # type: ignore[dict-item]
        c.heartbeat_interval = 0.01
        beats: list[float] = []
        done = asyncio.Event()

        async def heartbeat() -> dict[str, Any]:
            beats.append(time.monotonic())
            if len(beats) == 1:
                c.heartbeat_interval = 30.0  # the next regular beat would be far away
                raise RateLimited("m", "rate_limited", retry_after=0.02)
            done.set()
            return {}

        c.heartbeat = heartbeat  # type: ignore[method-assign]
        task = asyncio.create_task(c._beat())
        try:
            await asyncio.wait_for(done.wait(), 10)
        finally:
            task.cancel()
        return beats

    beats = asyncio.run(run())
    assert len(beats) == 2 and beats[1] - beats[0] < 5  # retry_after, not the interval
