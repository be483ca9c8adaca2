"""Rate limits' isolation: one agent floods the daemon at 20x its request limit; how much
slower do the others' requests get? Measured in rounds, each a quiet phase then a flooded
one back to back (the same background for both), the headline the median over rounds of
the flooded / quiet p95 ratio (goal <= 2x). A latency ratio on a shared 2-core machine is a
measurement, not a pass/fail test: tests/e2e/test_rate_limits.py checks what the limit
does (the flood refused, the victim never), this row how much the flood still costs."""

from __future__ import annotations

import statistics
import time

import zmq

from benchkit import Row
from benchkit.flooder import flooding
from benchkit.var_rows import _call
from mabeamd.testing import Daemon

LIMIT = 100.0  # requests/s per agent
FLOOD_RATE = 20 * LIMIT

CONFIG = f"""
[limits]
agent_requests = {LIMIT}
agent_requests_burst = {int(LIMIT)}
"""


def flood(rounds: int, samples: int) -> Row:
    metric = "victim p95 under one agent's 20x flood (flooded / quiet)"
    d = Daemon(CONFIG, workers=2).start()
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(d.agent_endpoint)
    try:
        _call(s, 0, "hello", {"agent": "victim"})
        _call(s, 1, "var.create", {"agent": "victim", "name": "victim/v", "value": 0})

        def p95() -> float:
            # reads through the agent endpoint: the path the flood takes; they name no
            # agent, so the victim is not held to LIMIT itself
            lat = []
            for k in range(samples):
                t = time.perf_counter()
                _call(s, 2 + k, "var.get", {"name": "victim/v"})
                lat.append(time.perf_counter() - t)
            return sorted(lat)[int(0.95 * samples)]

        p95()  # warm-up
        quiet, flooded = [], []
        for r in range(rounds):
            quiet.append(p95())
            with flooding(d, f"flooder-{r}", FLOOD_RATE):
                flooded.append(p95())
    finally:
        s.close()
        ctx.term()
        d.stop()
    ratios = [f / q for q, f in zip(quiet, flooded, strict=True)]
    median = statistics.median(ratios)
    return Row(metric, "x", goal="<= 2x", p50=median, p95=max(ratios), p99=max(ratios),
               spread=f"{min(ratios):.2f}-{max(ratios):.2f}", samples=samples, reps=rounds,
               note=f"median over {rounds} rounds of {samples} reads each; quiet p95s "
                    f"{[round(q * 1e6) for q in quiet]} us, flooded "
                    f"{[round(f * 1e6) for f in flooded]} us; limit {LIMIT:g}/s; p95 and "
                    "p99 columns = the worst round",
               extra={"ratios": ratios, "quiet_p95_s": quiet, "flooded_p95_s": flooded})

