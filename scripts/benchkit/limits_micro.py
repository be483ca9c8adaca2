"""What [limits] costs the agent endpoint per request, in-process (no sockets: the reply
send is a no-op), so the figure is the endpoint's own work and not the machine's noise:

    .venv/bin/python scripts/benchkit/limits_micro.py

Each variant serves the same request (`ping` naming a registered agent) ROUNDS x N times,
the variants alternating, and the best round counts (the least disturbed by other
processes). Rates are set so high that every request is admitted: the cost of admitting,
which every request pays when limits are on.
"""

from __future__ import annotations

import dataclasses
import timeit
from typing import Any

import zmq.asyncio

from mabeamd.agents.endpoint import AgentEndpoint, Request
from mabeamd.config import LimitsSection
from mabeamd.net import wire

N, ROUNDS = 20_000, 15
HUGE = 1e9  # requests (bytes) per second: never refused


def endpoint(ctx: zmq.asyncio.Context, limits: LimitsSection) -> AgentEndpoint:
    ep = AgentEndpoint(ctx, [], 1 << 20, 64, None)
    ep._send = lambda index, envelope, frames: True  # type: ignore[method-assign]

    def ping(req: Request, body: dict[str, Any]) -> Any:
        return {"pong": True}

    ep.handlers["ping"] = ping
    conn = (0, b"\x00peer")
    ep.conn_of = lambda agent: conn if agent == "alice" else None
    ep.configure_limits(dataclasses.asdict(limits))
    return ep


def main() -> None:
    ctx = zmq.asyncio.Context()
    frames = [b"\x00peer", *wire.encode({"id": 1, "op": "ping"}, {"agent": "alice"})]
    variants = {
        "limits off": LimitsSection(),
        "per connection, requests": LimitsSection(connection_requests=HUGE),
        "per connection + per agent, requests": LimitsSection(connection_requests=HUGE,
                                                              agent_requests=HUGE),
        "per connection + per agent, requests + bytes": LimitsSection(
            connection_requests=HUGE, agent_requests=HUGE, connection_bytes=HUGE,
            agent_bytes=HUGE),
    }
    eps = {name: endpoint(ctx, lim) for name, lim in variants.items()}
    best = dict.fromkeys(eps, float("inf"))
    def serve(ep: AgentEndpoint) -> None:
        handle = ep._handle
        for _ in range(N):
            handle(0, frames, None)

    for _ in range(ROUNDS):
        for name, ep in eps.items():
            t = timeit.timeit(lambda ep=ep: serve(ep), number=1) / N  # type: ignore[misc]
            best[name] = min(best[name], t)
    base = best["limits off"]
    for name, t in best.items():
        print(f"{name:46s} {t * 1e6:6.2f} us/request  ({(t - base) * 1e9:+6.0f} ns)")
    holder = eps["limits off"]
    test = min(timeit.repeat("ep.limits is not None", globals={"ep": holder},
                             number=1_000_000, repeat=7)) / 1_000_000
    print(f"{'the off path: one attribute test':46s} {test * 1e9:6.0f} ns")
    ctx.term()


if __name__ == "__main__":
    main()
