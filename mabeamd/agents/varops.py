"""Variable ops on the agent endpoint (and for mabeamctl): route each to its shard's worker
(sharding.py says which: crc32 of the name, or of its `{tag}`, mod the shard count).

The arbiter validates the caller (writes need an agent registered on the calling connection,
which becomes the actor), forwards the request over the worker link and relays the worker's
answer; a write's `var.<name>` event is published once the worker has made it durable. Reads
need no agent: every agent may read every variable. A shard whose worker is not running
answers `busy` (retry), and requests in flight when a worker dies get `busy` too.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mabeamd.agents.endpoint import AgentEndpoint, Request
from mabeamd.agents.events import EventPublisher
from mabeamd.agents.registry import Registry
from mabeamd.net.wire import ErrorCode, Packed, WireError, check_fields
from mabeamd.storage.sharding import shard_of
from mabeamd.storage.variables import ADMIN, READ_OPS, WRITE_FIELDS

FORWARD_TIMEOUT = 30.0
MAX_LIST = 1000


Send = Callable[[int, dict[str, Any]], bool]


class VariableService:
    def __init__(self, shards: int, send: Send, is_running: Callable[[int], bool],
                 registry: Registry, events: EventPublisher) -> None:
        self.shards = shards
        self._send = send
        self._is_running = is_running
        self.registry = registry
        self.events = events
        self._ids = itertools.count(1)
        # fwd id -> (shard, future, deadline on the loop clock); in id order, hence in
        # deadline order. One timer sweeps expired entries (no timer per request).
        self._pending: dict[int, tuple[int, asyncio.Future[Any], float]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        # (actor, op, body) -> a reason to refuse, or None: the mabeamd_authorize hook.
        self.authorize: Callable[[str, str, dict[str, Any]], str | None] = \
            lambda actor, op, body: None

    def install(self, endpoint: AgentEndpoint) -> None:
        for op in WRITE_FIELDS:
            endpoint.handlers[op] = self._write_handler(op)
        for op in READ_OPS:
            endpoint.handlers[op] = self._read_handler(op)
        endpoint.handlers["var.list"] = lambda req, body: self.list_vars(body)

    # --- handlers --------------------------------------------------------------------------

    def _write_handler(self, op: str) -> Callable[[Request, dict[str, Any]], Any]:
        def handler(req: Request, body: dict[str, Any]) -> Any:
            check_fields(body, op, WRITE_FIELDS[op], {"agent", "name"})
            agent = body["agent"]
            if not isinstance(agent, str):
                raise WireError(ErrorCode.BAD_REQUEST, "agent must be an agent id")
            self.registry.owned(agent, req.conn)
            self.registry.touch(agent, time.monotonic())
            reason = self.authorize(agent, op, body)
            if reason is not None:
                raise WireError(ErrorCode.FORBIDDEN, reason)
            args = {k: v for k, v in body.items() if k != "agent"}
            return self.forward(op, args, agent)
        return handler

    def _read_handler(self, op: str) -> Callable[[Request, dict[str, Any]], Any]:
        def handler(req: Request, body: dict[str, Any]) -> Any:
            check_fields(body, op, {"name"}, {"name"})
            return self.forward(op, body, ADMIN)
        return handler

    def forward(self, op: str, args: dict[str, Any], actor: str) -> Awaitable[Any]:
        name = args.get("name")
        if not isinstance(name, str):
            raise WireError(ErrorCode.BAD_REQUEST, "name must be a string")
        return self.to_shard(shard_of(name, self.shards), op, args, actor)

    def to_shard(self, shard: int, op: str, args: dict[str, Any], actor: str,
                 ) -> asyncio.Future[Any]:
        """Send a request to a shard's worker; the future gets its answer. A plain future,
        not a coroutine: the agent endpoint replies from its done-callback, so a forwarded
        request costs no task and no timer of its own (the hop cost docs/benchmarks.md
        measures)."""
        if not self._is_running(shard):
            raise WireError(ErrorCode.BUSY, f"shard {shard} is not serving (its worker is "
                            "restarting); retry")
        fwd = next(self._ids)
        loop = asyncio.get_running_loop()
        if not self._send(shard, {"fwd": fwd, "op": op, "args": args, "actor": actor}):
            raise WireError(ErrorCode.BUSY, f"shard {shard} is not reachable; retry")
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending[fwd] = (shard, fut, loop.time() + FORWARD_TIMEOUT)
        if self._sweeper is None:
            self._sweeper = loop.call_later(1.0, self._sweep)
        return fut

    def _sweep(self) -> None:
        """Fail requests their worker has not answered within FORWARD_TIMEOUT."""
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

    async def list_vars(self, body: dict[str, Any]) -> Any:
        """One page of variables by name prefix, merged across all shards in name order."""
        check_fields(body, "var.list", {"prefix", "after", "limit"})
        prefix, after = body.get("prefix", ""), body.get("after") or ""
        limit = body.get("limit", 100)
        if not isinstance(prefix, str) or not isinstance(after, str):
            raise WireError(ErrorCode.BAD_REQUEST, "prefix and after must be strings")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise WireError(ErrorCode.BAD_REQUEST, f"limit must be 1..{MAX_LIST}")
        args = {"prefix": prefix, "after": after, "limit": limit}
        sent: list[asyncio.Future[Any]] = []
        try:
            for i in range(self.shards):
                sent.append(self.to_shard(i, "var.list", args, ADMIN))
        except WireError:
            for fut in sent:
                fut.cancel()  # their answers, if any, are dropped
            raise
        pages = await asyncio.gather(*sent)
        merged = sorted((v for p in pages for v in p["vars"]), key=lambda v: v["name"])
        more = any(p["next"] for p in pages) or len(merged) > limit
        page = merged[:limit]
        return {"vars": page, "next": page[-1]["name"] if more and page else None}

    # --- from the worker link --------------------------------------------------------------

    def on_result(self, body: dict[str, Any]) -> None:
        entry = self._pending.pop(body.get("fwd"), None)  # type: ignore[arg-type]
        if entry is None or entry[1].done():
            return  # timed out or cancelled already
        if body.get("ok"):
            event = body.get("event")
            if isinstance(event, dict):
                self.events.publish(f"var.{event.get('name')}", event)
            packed = body.get("packed")
            entry[1].set_result(Packed(packed) if isinstance(packed, bytes)
                                else body.get("result"))
        else:
            details = body.get("details")
            entry[1].set_exception(WireError(str(body.get("code")), str(body.get("message")),
                                             details=details if isinstance(details, dict)
                                             else None))

    def worker_down(self, shard: int) -> None:
        """Requests the dead worker will never answer: retryable."""
        for fwd in [k for k, e in self._pending.items() if e[0] == shard]:
            _, fut, _ = self._pending.pop(fwd)
            if not fut.done():
                fut.set_exception(WireError(ErrorCode.BUSY, f"shard {shard}'s worker died "
                                            "while serving the request; it may or may not have "
                                            "been applied: read it back, then retry"))
