"""Variable ops on the agent endpoint (and for mabeamctl): route each to its shard's worker
(sharding.py says which: crc32 of the name, or of its `{tag}`, mod the shard count).

The arbiter validates the caller (writes need an agent registered on the calling connection,
which becomes the actor), forwards the request over the worker link and relays the worker's
answer (net/shardcall.py); a write's `var.<name>` event is published once the worker has
made it durable. Writes are admitted by agents/admission.py, as on shard endpoints. Reads
need no agent: every agent may read every variable. A shard whose worker is not running
answers `busy` (retry), and requests in flight when a worker dies get `busy` too.

`var.batch` (agents/batch.py) is admitted here op by op, split by shard, and each part
forwarded to its worker as one link message; the elements come back in each part's order
and are put back in the request's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mabeamd.agents import batch
from mabeamd.agents.admission import Authorize, WriteAdmission
from mabeamd.agents.endpoint import AgentEndpoint, Request
from mabeamd.agents.registry import Registry
from mabeamd.net import wire
from mabeamd.net.shardcall import ShardCalls
from mabeamd.net.wire import ErrorCode, Packed, WireError, check_fields
from mabeamd.storage.sharding import shard_of
from mabeamd.storage.variables import ADMIN, READ_OPS, WRITE_FIELDS, check_read

MAX_LIST = 1000

log = logging.getLogger(__name__)


class VariableService:
    def __init__(self, calls: ShardCalls, registry: Registry, authorize: Authorize, *,
                 on_forbidden: Callable[[str, Any, Any, str], None] | None = None) -> None:
        self.calls = calls
        self.shards = calls.shards
        self.registry = registry
        self.admission = WriteAdmission(self._owned, authorize)
        # (op, agent, name, reason): a write the authorize hook refused, for the audit log.
        self.on_forbidden = on_forbidden
        self._charge: Callable[[Any, Any], None] = lambda conn, agent: None

    def install(self, endpoint: AgentEndpoint) -> None:
        for op in WRITE_FIELDS:
            endpoint.handlers[op] = self._write_handler(op)
        for op in READ_OPS:
            endpoint.handlers[op] = self._read_handler(op)
        endpoint.handlers["var.list"] = lambda req, body: self.list_vars(body)
        endpoint.handlers["var.batch"] = self._batch_handler
        self._charge = endpoint.charge

    # --- handlers --------------------------------------------------------------------------

    def _owned(self, conn: Any, agent: str, body: dict[str, Any]) -> None:
        """This path's proof (admission.py): the agent is registered on the calling
        connection; a write also counts as a sign of life."""
        self.registry.owned(agent, conn)
        self.registry.touch(agent, time.monotonic())

    def _write_handler(self, op: str) -> Callable[[Request, dict[str, Any]], Any]:
        admit = self.admission.admit

        def handler(req: Request, body: dict[str, Any]) -> Any:
            try:
                agent, args = admit(op, body, req.conn)
            except WireError as exc:  # the refusal path only: the write path pays nothing
                if exc.code == ErrorCode.FORBIDDEN and self.on_forbidden is not None:
                    self.on_forbidden(op, body.get("agent"), body.get("name"), exc.message)
                raise
            return self.forward(op, args, agent)
        return handler

    def _read_handler(self, op: str) -> Callable[[Request, dict[str, Any]], Any]:
        def handler(req: Request, body: dict[str, Any]) -> Any:
            check_read(op, body)
            return self.forward(op, body, ADMIN)
        return handler

    def _batch_handler(self, req: Request, body: dict[str, Any]) -> Any:
        ops = batch.parse(body)
        elements: list[bytes | None] = [None] * len(ops)
        parts: dict[int, list[tuple[int, list[Any]]]] = {}
        for i, op_body in enumerate(ops):
            op = ""
            fields: dict[str, Any] = {}
            try:
                if i:  # each op is a request, a malformed one too, as alone
                    self._charge(req.conn, op_body.get("agent")
                                 if isinstance(op_body, dict) else None)
                op, fields = batch.split(op_body)
                if op in WRITE_FIELDS:
                    agent = fields.get("agent")
                    try:
                        actor, args = self.admission.admit(op, fields, req.conn)
                    except WireError as exc:
                        if exc.code == ErrorCode.FORBIDDEN and self.on_forbidden is not None:
                            self.on_forbidden(op, agent, fields.get("name"), exc.message)
                        raise
                else:
                    check_read(op, fields)
                    actor, args = ADMIN, fields
                name = args.get("name")
                if not isinstance(name, str):
                    raise WireError(ErrorCode.BAD_REQUEST, "name must be a string")
            except WireError as exc:
                elements[i] = batch.error(exc)
                continue
            except Exception as exc:  # a bug (or a hook's): this op's answer, not the batch's
                elements[i] = batch.error(wire.incident(log, f"an op of batch {req.rid!r} "
                                                        "failed", exc))
                continue
            parts.setdefault(shard_of(name, self.shards), []).append((i, [op, args, actor]))
        if not parts:
            return batch.join(elements)  # type: ignore[arg-type]
        # Sent now, not when the reply is awaited: a request this connection sends after
        # the batch must not overtake it on the way to a worker.
        sent: list[tuple[list[tuple[int, list[Any]]], Awaitable[Any] | WireError]] = []
        for shard, part in parts.items():
            try:
                sent.append((part, self.calls.call(shard, "var.batch",
                                                   {"items": [item for _, item in part]},
                                                   ADMIN)))
            except WireError as exc:
                sent.append((part, exc))
        return self._batch_collect(elements, sent)

    async def _batch_collect(
            self, elements: list[bytes | None],
            sent: list[tuple[list[tuple[int, list[Any]]], Awaitable[Any] | WireError]],
    ) -> Packed:
        """The parts' answers put back in request order; a part its worker could not take
        (or lost) answers its every op with that error."""
        for part, answer in sent:
            try:
                if isinstance(answer, WireError):
                    raise answer
                got = await answer
                if not isinstance(got, list) or len(got) != len(part):
                    raise WireError(ErrorCode.INTERNAL, "a worker answered a batch with "
                                    "the wrong number of elements")
                for (i, _), element in zip(part, got, strict=True):
                    elements[i] = bytes(element)
            except WireError as exc:
                failed = batch.error(exc)
                for i, _ in part:
                    elements[i] = failed
        return batch.join(elements)  # type: ignore[arg-type]

    def forward(self, op: str, args: dict[str, Any], actor: str) -> Awaitable[Any]:
        """To the shard that owns args["name"] (the shard-call layer: net/shardcall.py)."""
        name = args.get("name")
        if not isinstance(name, str):
            raise WireError(ErrorCode.BAD_REQUEST, "name must be a string")
        return self.calls.call(shard_of(name, self.shards), op, args, actor)

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
        pages = await asyncio.gather(*self.calls.call_all("var.list", args, ADMIN))
        merged = sorted((v for p in pages for v in p["vars"]), key=lambda v: v["name"])
        more = any(p["next"] for p in pages) or len(merged) > limit
        page = merged[:limit]
        return {"vars": page, "next": page[-1]["name"] if more and page else None}
