"""net/drain.py: a socket served from its ZMQ_FD delivers every message, whenever it came.

Real sockets over inproc, one thread, no daemon. ZMQ_FD's signal is taken by whichever call
on the socket processes its mailbox first; a socket's first send always does (later ones
are throttled to one look a millisecond), so the cases where a send takes the signal of a
message that arrived meanwhile are made deterministic by making that send the socket's first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop
import zmq

from mabeamd.net.drain import (
    BATCH,
    BATCH_BYTES,
    Drain,
    Receive,
    each,
    recv_bounded,
    recv_ready_batch,
    recv_ready_bounded,
)
from mabeamd.net.frames import recv_batch

RECEIVES = [pytest.param(recv_ready_batch, id="zmq_events"),
            pytest.param(recv_batch, id="until_again")]
LOOPS = [pytest.param(asyncio.new_event_loop, id="asyncio"),
         pytest.param(uvloop.new_event_loop, id="uvloop")]
WAIT = 5.0  # seconds: only a failing test waits this long


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    """(served, peer): two PAIR sockets over inproc."""
    ctx: zmq.Context[zmq.Socket[Any]] = zmq.Context()
    served, peer = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    served.bind("inproc://drain-test")
    peer.connect("inproc://drain-test")
    yield served, peer
    ctx.destroy(linger=0)


@pytest.fixture(params=LOOPS)
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    factory: Callable[[], asyncio.AbstractEventLoop] = request.param
    loop = factory()
    yield loop
    loop.close()


class Got:
    """on_batch that records every batch; `until(n)` waits for n messages in all."""

    def __init__(self) -> None:
        self.batches: list[list[list[bytes]]] = []
        self.count = 0
        self._changed = asyncio.Event()
        self.also: Callable[[list[list[bytes]]], None] = lambda batch: None

    def __call__(self, batch: list[list[bytes]]) -> None:
        self.batches.append(batch)
        self.count += len(batch)
        self._changed.set()
        self.also(batch)

    async def until(self, n: int) -> None:
        async def reached() -> None:
            while self.count < n:
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(reached(), WAIT)

    def messages(self) -> list[bytes]:
        return [frames[0] for batch in self.batches for frames in batch]


@pytest.mark.parametrize("receive", RECEIVES)
def test_messages_sent_before_start_are_served_at_start(
        pair: tuple[zmq.Socket[Any], zmq.Socket[Any]], loop: asyncio.AbstractEventLoop,
        receive: Receive[list[bytes]]) -> None:
    served, peer = pair
    for k in range(3):
        peer.send(b"%d" % k)
    got = Got()

    async def scenario() -> None:
        drain = Drain(served, got, receive)
        drain.start(asyncio.get_running_loop())
        await got.until(3)
        drain.close()
    loop.run_until_complete(scenario())
    assert got.messages() == [b"0", b"1", b"2"]


@pytest.mark.parametrize("receive", RECEIVES)
def test_a_message_whose_signal_a_reply_took_is_served(
        pair: tuple[zmq.Socket[Any], zmq.Socket[Any]], loop: asyncio.AbstractEventLoop,
        receive: Receive[list[bytes]]) -> None:
    """While the first batch is served, the peer sends again and the handler then replies
    on the socket: that send takes the new message's signal, and only the look after the
    batch (`sends=True`) finds it."""
    served, peer = pair
    peer.send(b"first")
    got = Got()

    def reply(batch: list[list[bytes]]) -> None:
        if got.count == 1:
            peer.send(b"second")
        for _ in batch:
            served.send(b"reply")
    got.also = reply

    async def scenario() -> None:
        drain = Drain(served, got, receive, sends=True)
        drain.start(asyncio.get_running_loop())
        await got.until(2)
        drain.close()
    loop.run_until_complete(scenario())
    assert got.messages() == [b"first", b"second"]
    assert peer.recv() == b"reply"


@pytest.mark.parametrize("receive", RECEIVES)
def test_a_send_outside_a_drain_wakes_it(
        pair: tuple[zmq.Socket[Any], zmq.Socket[Any]], loop: asyncio.AbstractEventLoop,
        receive: Receive[list[bytes]]) -> None:
    """A push sent between drains takes the signal of a message that just came; wake()
    schedules the drain that finds it."""
    served, peer = pair
    got = Got()

    async def scenario() -> None:
        drain = Drain(served, got, receive)
        drain.start(asyncio.get_running_loop())  # nothing yet: an empty first drain
        peer.send(b"request")
        served.send(b"push")
        drain.wake()
        await got.until(1)
        drain.close()
    loop.run_until_complete(scenario())
    assert got.messages() == [b"request"]
    assert peer.recv() == b"push"


@pytest.mark.parametrize("receive", RECEIVES)
def test_a_burst_is_served_one_batch_a_turn(
        pair: tuple[zmq.Socket[Any], zmq.Socket[Any]], loop: asyncio.AbstractEventLoop,
        receive: Receive[list[bytes]]) -> None:
    """More than BATCH waiting: one batch, then other work scheduled meanwhile gets its
    turn, then the next batch; none lost, in order."""
    served, peer = pair
    total = 2 * BATCH + 10
    for k in range(total):
        peer.send(b"%d" % k)
    got = Got()
    order: list[str] = []
    got.also = lambda batch: order.append(f"batch {len(batch)}")

    async def scenario() -> None:
        running = asyncio.get_running_loop()
        drain = Drain(served, got, receive)
        drain.start(running)
        running.call_soon(order.append, "other work")
        await got.until(total)
        drain.close()
    loop.run_until_complete(scenario())
    assert order == [f"batch {BATCH}", f"batch {BATCH}", "other work", "batch 10"]
    assert got.messages() == [b"%d" % k for k in range(total)]


def test_each_serves_a_batch_message_by_message(
        pair: tuple[zmq.Socket[Any], zmq.Socket[Any]], loop: asyncio.AbstractEventLoop,
        ) -> None:
    served, peer = pair
    for k in range(3):
        peer.send_multipart([b"m", b"%d" % k])
    seen: list[list[bytes]] = []

    async def scenario() -> None:
        drain = Drain(served, each(seen.append), recv_ready_batch)
        drain.start(asyncio.get_running_loop())
        drain.close()
    loop.run_until_complete(scenario())
    assert seen == [[b"m", b"0"], [b"m", b"1"], [b"m", b"2"]]


def test_close_removes_the_reader_and_ends_wakes(
        pair: tuple[zmq.Socket[Any], zmq.Socket[Any]]) -> None:
    """On asyncio's loop, whose remove_reader says whether there was one (uvloop's does not)."""
    served, peer = pair
    got = Got()

    async def scenario() -> None:
        running = asyncio.get_running_loop()
        drain = Drain(served, got, recv_ready_batch)
        drain.start(running)
        drain.wake()  # scheduled before close: it must find the drain closed
        drain.close()
        assert running.remove_reader(served.FD) is False  # already gone
        peer.send(b"after close")
        drain.wake()
        await asyncio.sleep(0)  # one turn: the scheduled drain runs (and does nothing)
        await asyncio.sleep(0)
    asyncio.run(scenario())
    assert got.batches == []
    assert served.recv(zmq.NOBLOCK) == b"after close"  # still there, for the socket's owner


def test_a_drain_of_a_closed_socket_does_nothing(
        pair: tuple[zmq.Socket[Any], zmq.Socket[Any]], loop: asyncio.AbstractEventLoop,
        ) -> None:
    """A drain scheduled before the socket was closed under it (shutdown) returns quietly."""
    served, _ = pair
    got = Got()

    async def scenario() -> None:
        drain = Drain(served, got, recv_ready_batch)
        drain.start(asyncio.get_running_loop())
        drain.wake()
        served.close(linger=0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        drain.close()  # the socket is gone: nothing to remove, no error
    loop.run_until_complete(scenario())
    assert got.batches == []


@pytest.mark.parametrize("receive", [pytest.param(recv_ready_bounded, id="zmq_events"),
                                     pytest.param(recv_bounded, id="until_again")])
def test_a_bounded_batch_holds_about_batch_bytes_and_the_rest_is_served(
        pair: tuple[zmq.Socket[Any], zmq.Socket[Any]], loop: asyncio.AbstractEventLoop,
        receive: Receive[list[bytes]]) -> None:
    """Big frames from outside: a batch stops once BATCH_BYTES arrived (it is held whole
    while served), and the look after the batch (sends=True) serves the rest."""
    served, peer = pair
    big = BATCH_BYTES // 3 + 1
    for k in range(10):
        peer.send(b"%d" % k + b"x" * big)
    got = Got()

    async def scenario() -> None:
        drain = Drain(served, got, receive, sends=True)
        drain.start(asyncio.get_running_loop())
        await got.until(10)
        drain.close()
    loop.run_until_complete(scenario())
    assert [m[:1] for m in got.messages()] == [b"%d" % k for k in range(10)]
    assert max(sum(map(len, f)) for b in got.batches for f in b) <= big + 1
    assert all(sum(len(f[0]) for f in b) < BATCH_BYTES + big + 1 for b in got.batches)
    assert max(len(b) for b in got.batches) == 3
