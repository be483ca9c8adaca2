"""Many variable ops in few messages: `var.batch` from the client side (agents/batch.py has
the daemon's side and the semantics: each op independent, in order per variable, answered on
its own).

`run()` splits the ops by shard and sends each shard's part to that shard's endpoint in one
message (all parts at once), with each write's credential, as single ops go. What a shard's
route cannot serve goes to the agent endpoint in one more batch, by the rule single ops
follow (routes.direct_fallback): no route, or an op answered `busy`, `not_registered` or
`wrong_shard` there (nothing was done) is sent again through the arbiter; a connection lost
with the part in flight sends its reads again and answers its writes `busy` ("may or may
not have been applied"), since a write must not be applied twice.

`Pipeline` queues ops and runs them as one batch: `async with client.pipeline() as p:`
runs them on leaving the block, and `p.results` has one entry per op, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from mabeamd.agents.batch import MAX_OPS
from mabeamd.client.bodies import write_body
from mabeamd.client.errors import Busy, MabeamError, NotFound, error_for
from mabeamd.client.routes import Lost, NoRoute

if TYPE_CHECKING:
    from mabeamd.client.aio import AsyncClient

log = logging.getLogger(__name__)
WRITES = frozenset({"var.create", "var.set", "var.delete"})
RESEND = frozenset({"busy", "not_registered", "wrong_shard"})  # nothing was done: resend


class BatchError(MabeamError):
    """Some ops of a batch failed; the others ran (a batch is not a transaction).
    `results` has every op's result, or the MabeamError it failed with, in order."""

    def __init__(self, message: str, results: list[Any]) -> None:
        super().__init__(message, "batch")
        self.results = results

    @property
    def errors(self) -> list[tuple[int, MabeamError]]:
        return [(i, r) for i, r in enumerate(self.results) if isinstance(r, MabeamError)]


def element(e: Any) -> Any:
    """One element of a batch reply: the op's result, or its error as an exception."""
    if isinstance(e, dict) and e.get("status") == "ok":
        return e.get("result")
    err = e.get("error") if isinstance(e, dict) else None
    if not isinstance(err, dict):
        return error_for("internal", f"malformed batch element {e!r}")
    return error_for(str(err.get("code")), str(err.get("message")), err)


async def run(client: AsyncClient, ops: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Every op's result or MabeamError (returned, not raised), in the order of `ops`."""
    results: list[Any] = [None] * len(ops)
    by_shard: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    arbiter: list[int] = []
    for i, op in enumerate(ops):
        # What is not a map naming a variable is the agent endpoint's to answer.
        name = op.get("name") if isinstance(op, Mapping) else None
        target = client.direct_target(dict(op), op.get("agent") if op.get("op") in WRITES
                                      else None) if isinstance(name, str) else None
        if target is None:
            arbiter.append(i)
        else:
            by_shard.setdefault(target[0], []).append((i, target[1]))
    parts = [(shard, part[k:k + MAX_OPS]) for shard, part in by_shard.items()
             for k in range(0, len(part), MAX_OPS)]
    answers = await asyncio.gather(
        *(client._request("var.batch", {"ops": [body for _, body in part]}, None, shard)
          for shard, part in parts), return_exceptions=True)
    stale = False
    for (_, part), answer in zip(parts, answers, strict=True):
        if isinstance(answer, NoRoute):
            arbiter += [i for i, _ in part]
        elif isinstance(answer, Lost):
            for i, body in part:
                if ops[i]["op"] in WRITES:
                    results[i] = Busy(f"{ops[i]['op']} {body.get('name')!r}: the worker "
                                      "went away while serving it; it may or may not have "
                                      "been applied: read it back, then retry", "busy")
                else:
                    arbiter.append(i)
        elif isinstance(answer, BaseException):
            if not isinstance(answer, Exception):
                raise answer
            for i, _ in part:
                results[i] = answer
        else:
            got = answer.get("results") if isinstance(answer, dict) else None
            if not isinstance(got, list) or len(got) != len(part):
                raise error_for("internal", "a shard endpoint answered a batch with the "
                                "wrong number of results")
            for (i, _), e in zip(part, got, strict=True):
                r = element(e)
                if isinstance(r, MabeamError) and r.code in RESEND:
                    if r.code == "wrong_shard" and not stale:
                        stale = True
                        log.warning("batch: %s (this client counts %s shards); those ops "
                                    "sent through the agent endpoint instead", r.message,
                                    client.shards)
                    arbiter.append(i)
                else:
                    results[i] = r
    arbiter.sort()
    for k in range(0, len(arbiter), MAX_OPS):
        chunk = arbiter[k:k + MAX_OPS]
        reply = await client.request("var.batch", {"ops": [ops[i] for i in chunk]})
        got = reply.get("results") if isinstance(reply, dict) else None
        if not isinstance(got, list) or len(got) != len(chunk):
            raise error_for("internal", "the daemon answered a batch with the wrong number "
                            "of results")
        for i, e in zip(chunk, got, strict=True):
            results[i] = element(e)
    return results


_O = TypeVar("_O", bound="Ops")


class Ops:
    """The queue of a pipeline: each method adds one op and returns the queue, to chain."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self.ops: list[dict[str, Any]] = []
        self.results: list[Any] = []

    def get(self: _O, name: str) -> _O:
        self.ops.append({"op": "var.get", "name": name})
        return self

    def history(self: _O, name: str) -> _O:
        self.ops.append({"op": "var.history", "name": name})
        return self

    def create(self: _O, agent: str, name: str, value: Any = None, *, type: str = "any",
               access: str = "public", writers: list[str] | None = None,
               policy: str = "last_write_wins",
               constraints: dict[str, Any] | None = None) -> _O:
        body = self._client.create_body(agent, name, value, type=type, access=access,
                                        writers=writers, policy=policy,
                                        constraints=constraints)
        self.ops.append({"op": "var.create", **body})
        return self

    def set(self: _O, agent: str, name: str, value: Any, *,
            expect_version: int | None = None) -> _O:
        self.ops.append({"op": "var.set", **write_body(agent, name, expect_version,
                                                       value=value)})
        return self

    def delete(self: _O, agent: str, name: str, *, expect_version: int | None = None) -> _O:
        self.ops.append({"op": "var.delete", **write_body(agent, name, expect_version)})
        return self

    def __len__(self) -> int:
        return len(self.ops)


class Pipeline(Ops):
    """Queue variable ops, then run them as one batch (each op on its own: see the module).

        async with client.pipeline() as p:
            p.set("a1", "x", 1)
            p.get("y")
        x, y = p.results
    """

    async def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        """Run the queued ops (and empty the queue): their results in order. If any failed,
        raise BatchError (its `results` holds them all) unless raise_on_error is False,
        when failed ops' entries are their MabeamError."""
        ops, self.ops = self.ops, []
        self.results = await run(self._client, ops) if ops else []
        return checked(self.results, raise_on_error)

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            await self.execute()


def checked(results: list[Any], raise_on_error: bool) -> list[Any]:
    if raise_on_error:
        failed = [r for r in results if isinstance(r, MabeamError)]
        if failed:
            raise BatchError(f"{len(failed)} of {len(results)} ops failed; the first: "
                             f"{failed[0]}", results)
    return results


async def get_many(client: AsyncClient, names: Sequence[str],
                   local_get: Callable[[str], dict[str, Any] | None] | None,
                   ) -> dict[str, dict[str, Any] | None]:
    """Each name's variable, None where there is none; `local_get` (the client's shared-
    memory read, None for none) answers what it can, the rest goes in one batch. Another
    failure raises BatchError."""
    found: dict[str, dict[str, Any] | None] = {}
    ask: list[str] = []
    for name in dict.fromkeys(names):
        if local_get is not None and client.shards:
            try:
                var = local_get(name)
            except NotFound:
                found[name] = None
                continue
            if var is not None:
                found[name] = var
                continue
        ask.append(name)
    if ask:
        results = await run(client, [{"op": "var.get", "name": n} for n in ask])
        for name, r in zip(ask, results, strict=True):
            found[name] = None if isinstance(r, MabeamError) and r.code == "not_found" else r
        checked([found[n] for n in ask], True)
    return {n: found[n] for n in names}


async def set_many(client: AsyncClient, agent: str, values: Mapping[str, Any],
                   ) -> dict[str, dict[str, Any]]:
    """Set each variable as `agent` (each set on its own): the new states by name, or
    BatchError once all ran if any failed (its `results` in the order of `values`)."""
    names = list(values)
    results = checked(await run(client, [{"op": "var.set", "agent": agent, "name": n,
                                          "value": values[n]} for n in names]), True)
    return dict(zip(names, results, strict=True))
