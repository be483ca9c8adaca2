"""Call shard N and await its answer: the arbiter's request/reply layer over the worker link.

The variable service (agents/varops.py), the session service (sessions/service.py) and the
control commands all send requests to the worker that owns a shard and wait for its
answer; this is the one place that numbers those requests, remembers them, matches the
worker's `results` to them and fails them when the answer cannot come (the worker is not
running, its link is full, it died, or it stayed silent past FORWARD_TIMEOUT). Everything
here fails with `busy`: the caller may retry.

A call returns a plain future, not a coroutine: the agent endpoint replies from its
done-callback, so a forwarded request costs no task and no timer of its own (the per-hop
cost docs/benchmarks.md measures). One timer sweeps expired calls, in id order, which is
deadline order.

A result on the link is {"fwd": id, "result": ...} (or "packed": bytes, relayed as is),
optionally with the write's "event", or {"fwd": id, "error": {code, message, ...}} in the
same shape as a wire error reply's body (wire.error_body); worker/main.py builds them. A
var.batch's is {"fwd": id, "elements": [packed element per op], "events": [...]}
(agents/batch.py).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from mabeamd.net.wire import ErrorCode, Packed, WireError

FORWARD_TIMEOUT = 30.0

# (shard, body) -> whether the link took it (False: the worker's queue is full or it is gone)
Send = Callable[[int, dict[str, Any]], bool]


class ShardCalls:
    def __init__(self, shards: int, send: Send, is_running: Callable[[int], bool],
                 on_event: Callable[[dict[str, Any]], None]) -> None:
        """`on_event` gets each write's event once the worker has made the write durable
        (the variable service publishes it as `var.<name>`)."""
        self.shards = shards
        self._send = send
        self._is_running = is_running
        self._on_event = on_event
        self._ids = itertools.count(1)
        # fwd id -> (shard, future, deadline on the loop clock); in id order, hence in
        # deadline order.
        self._pending: dict[int, tuple[int, asyncio.Future[Any], float]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def call(self, shard: int, op: str, args: dict[str, Any], actor: str,
             ) -> asyncio.Future[Any]:
        """Send `op` with `args` on behalf of `actor` to shard's worker; the future gets the
        answer, or the WireError it was refused with. Raises WireError(busy) at once when the
        worker cannot take it."""
        if not self._is_running(shard):
            raise WireError(ErrorCode.BUSY, f"shard {shard} is not serving (its worker is "
                            "restarting); retry")
        fwd = next(self._ids)
        if not self._send(shard, {"fwd": fwd, "op": op, "args": args, "actor": actor}):
            raise WireError(ErrorCode.BUSY, f"shard {shard} is not reachable; retry")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending[fwd] = (shard, fut, loop.time() + FORWARD_TIMEOUT)
        if self._sweeper is None:
            self._sweeper = loop.call_later(1.0, self._sweep)
        return fut

    def call_all(self, op: str, args: dict[str, Any], actor: str,
                 ) -> list[asyncio.Future[Any]]:
        """The same call to every shard; if one cannot be sent, the others' answers are
        dropped and the refusal raised."""
        sent: list[asyncio.Future[Any]] = []
        try:
            for i in range(self.shards):
                sent.append(self.call(i, op, args, actor))
        except WireError:
            for fut in sent:
                fut.cancel()
            raise
        return sent

    def pending(self) -> int:
        return len(self._pending)

    def _sweep(self) -> None:
        """Fail calls their worker has not answered within FORWARD_TIMEOUT."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        expired = []
        for fwd, (_, _, deadline) in self._pending.items():
            if deadline > now:
                break
            expired.append(fwd)
        for fwd in expired:
            shard, fut, _ = self._pending.pop(fwd)
            if not fut.done():
                fut.set_exception(WireError(ErrorCode.BUSY, f"shard {shard} did not answer "
                                            f"in {FORWARD_TIMEOUT:g}s; retry"))
        if self._pending:
            self._sweeper = loop.call_later(1.0, self._sweep)

    # --- from the worker link --------------------------------------------------------------

    def on_result(self, body: dict[str, Any]) -> None:
        entry = self._pending.pop(body.get("fwd"), None)  # type: ignore[arg-type]
        if entry is None or entry[1].done():
            return  # timed out or cancelled already
        error = body.get("error")
        if error is not None:
            entry[1].set_exception(WireError.from_body(error))
            return
        event = body.get("event")
        if isinstance(event, dict):
            self._on_event(event)
        elements = body.get("elements")
        if isinstance(elements, list):
            for event in body.get("events") or ():
                if isinstance(event, dict):
                    self._on_event(event)
            entry[1].set_result(elements)
            return
        packed = body.get("packed")
        entry[1].set_result(Packed(packed) if isinstance(packed, bytes) else body.get("result"))

    def worker_down(self, shard: int) -> None:
        """Calls the dead worker will never answer: retryable."""
        for fwd in [k for k, e in self._pending.items() if e[0] == shard]:
            _, fut, _ = self._pending.pop(fwd)
            if not fut.done():
                fut.set_exception(WireError(ErrorCode.BUSY, f"shard {shard}'s worker died "
                                            "while serving the request; it may or may not have "
                                            "been applied: read it back, then retry"))
