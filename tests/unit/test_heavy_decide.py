"""A `heavy` one-round protocol decides in a thread: the worker's event loop keeps turning
(heartbeats, shard requests) while a solver works. A full run under load had a combinatorial
session's worker killed as hung ("worker_restarted") while scipy loaded and HiGHS solved on
the loop, past the heartbeat timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from mabeamd.protocol import OneRound, Participant, Response


class Slow(OneRound):
    name = "slow"

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        time.sleep(1.0)  # a solver holding the CPU (it releases the GIL between bytecodes)
        return {"n": len(responses)}


class FakeSession:
    id, protocol, initiator = "s1", "slow", "boss"
    params: dict[str, Any] = {}
    variables: dict[str, dict[str, Any]] = {}

    def __init__(self) -> None:
        self.participants = [Participant("a"), Participant("b")]

    def remaining(self) -> float:
        return 10.0

    async def ask(self, agents: Iterable[str], kind: str, body: Any,
                  timeout: float | None = None) -> dict[str, Response]:
        return {a: Response(a, {}, k) for k, a in enumerate(agents)}


def longest_stall(proto: OneRound) -> tuple[float, Any]:
    async def main() -> tuple[float, Any]:
        stalls = [0.0]
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                stalls.append(now - last)
                last = now
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        out = await proto.run(FakeSession())  # type: ignore[arg-type]
        done.set()
        await tick
        return max(stalls), out.result
    return asyncio.run(main())


def test_a_heavy_decision_leaves_the_loop_free() -> None:
    heavy = Slow()
    heavy.heavy = True
    stall, result = longest_stall(heavy)
    assert result == {"n": 2}
    assert stall < 0.6, stall  # the loop kept ticking (every 10 ms, on a quiet machine)


def test_the_check_can_fail_a_light_decision_blocks_the_loop() -> None:
    stall, result = longest_stall(Slow())
    assert result == {"n": 2} and stall >= 0.95, stall


def test_the_solvers_are_heavy() -> None:
    from mabeam_auctions.combinatorial import Combinatorial
    from mabeam_markets.exchangemarket import ExchangeMarket
    from mabeam_markets.fisher import FisherMarket

    assert Combinatorial.heavy and FisherMarket.heavy and ExchangeMarket.heavy
