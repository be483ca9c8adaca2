"""Many variable ops in few messages: `var.batch` from the client side (agents/batch.py has
the daemon's side and the semantics: each op independent, in order per variable, answered on
its own).

`run()` splits the ops by shard and sends each shard's part to that shard's endpoint (all
shards at once; a part over MAX_OPS ops or the daemon's max_message bytes in messages one
after another), with each write's credential, as single ops go. What a shard's
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

from mabeamd.agents.batch import MAX_OPS, SKIP_AFTER
from mabeamd.client.bodies import write_body
from mabeamd.client.errors import Busy, MabeamError, NotFound, error_for
from mabeamd.client.routes import Lost, NoRoute
from mabeamd.net import wire
from mabeamd.net.wire import DEFAULT_MAX_MESSAGE
from mabeamd.storage.variables import WRITE_FIELDS

if TYPE_CHECKING:
    from mabeamd.client.aio import AsyncClient

log = logging.getLogger(__name__)
OP_SLACK = 128  # bytes per op beyond its own packing: a credential, the array's framing
MESSAGE_SLACK = 1024  # bytes of a message beyond its ops: envelope, header, the body's map


def _is_write(op: Any) -> bool:
    kind = op.get("op") if isinstance(op, Mapping) else None
    return isinstance(kind, str) and kind in WRITE_FIELDS  # an odd "op" is the daemon's to refuse


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


def _checked_ops(ops: Any) -> tuple[list[Any], list[int]]:
    """(ops as a list, each op's packed size), or TypeError before anything is sent (a part
    sent before another failed to encode would leave half a batch applied)."""
    if isinstance(ops, (str, bytes, Mapping)) or not isinstance(ops, (list, tuple)):
        raise TypeError(f"ops must be a list of op maps, not {type(ops).__name__}")
    try:
        # + room for the credential a write carries to a shard endpoint
        sizes = [len(wire.pack(op)) + OP_SLACK for op in ops]
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"a batch's ops must be msgpack-encodable: {exc}") from None
    return list(ops), sizes


def _chunks(indices: list[int], sizes: list[int], limit: int) -> list[list[int]]:
    """`indices` in order, cut into messages of at most MAX_OPS ops and `limit` bytes (an op
    bigger than that alone: the daemon's answer for it is too_large)."""
    out: list[list[int]] = []
    chunk: list[int] = []
    used = 0
    for i in indices:
        if chunk and (len(chunk) == MAX_OPS or used + sizes[i] > limit):
            out.append(chunk)
            chunk, used = [], 0
        chunk.append(i)
        used += sizes[i]
    if chunk:
        out.append(chunk)
    return out


def _limit(client: AsyncClient) -> int:
    return (client.max_message or DEFAULT_MAX_MESSAGE) - MESSAGE_SLACK


async def run(client: AsyncClient, ops: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Every op's result or MabeamError (returned, not raised), in the order of `ops`.
    Raises TypeError for what cannot be sent at all (ops not a list, a value msgpack cannot
    encode), as a single op would."""
    ops, sizes = _checked_ops(ops)
    results: list[Any] = [None] * len(ops)
    by_shard: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    arbiter: list[int] = []
    for i, op in enumerate(ops):
        # What is not a map naming a variable (or a write naming no agent) is the agent
        # endpoint's to answer.
        name = op.get("name") if isinstance(op, Mapping) else None
        write = _is_write(op)
        target = None
        if isinstance(name, str) and not (write and not isinstance(op.get("agent"), str)):
            target = client.direct_target(dict(op), op.get("agent") if write else None)
        if target is None:
            arbiter.append(i)
        else:
            by_shard.setdefault(target[0], []).append((i, target[1]))
    answered = await asyncio.gather(*(
        _shard_parts(client, ops, shard, part, results=results, sizes=sizes)
        for shard, part in by_shard.items()))
    stale = next((err for _, err in answered if err is not None), None)
    if stale is not None:
        log.warning("batch: %s (this client counts %s shards); those ops sent through the "
                    "agent endpoint instead", stale.message, client.shards)
    for resend, _ in answered:
        arbiter += resend
    arbiter.sort()
    for chunk in _chunks(arbiter, sizes, _limit(client)):
        try:
            reply = await client.request("var.batch", {"ops": [ops[i] for i in chunk]})
        except MabeamError as exc:  # the whole message refused (too_large, busy, ...)
            for i in chunk:
                results[i] = exc
            continue
        got = reply.get("results") if isinstance(reply, dict) else None
        if not isinstance(got, list) or len(got) != len(chunk):
            raise error_for("internal", "the daemon answered a batch with the wrong number "
                            "of results")
        for i, e in zip(chunk, got, strict=True):
            results[i] = element(e)
    return results


async def _shard_parts(client: AsyncClient, ops: list[Any], shard: int,
                       part: list[tuple[int, dict[str, Any]]], *, results: list[Any],
                       sizes: list[int]) -> tuple[list[int], MabeamError | None]:
    """One shard's ops on its route, in messages one after another (_chunks); returns
    the ops to resend through the agent endpoint, and a wrong_shard answer if one came (a
    stale shard count). Once an op on a name is resent, the
    later ops on that name are resent too, not run here: resent in order, they keep the
    order per variable."""
    resend: list[int] = []
    stale: MabeamError | None = None
    held: set[str] = set()
    bodies = dict(part)
    for indices in _chunks([i for i, _ in part], sizes, _limit(client)):
        chunk = []
        for i, body in ((i, bodies[i]) for i in indices):
            if body["name"] in held:
                resend.append(i)
            else:
                chunk.append((i, body))
        if not chunk:
            continue
        try:
            answer = await client._request("var.batch", {"ops": [b for _, b in chunk]},
                                           None, shard)
        except NoRoute:
            again = [i for i, _ in chunk]
        except Lost:
            again = []
            for i, body in chunk:
                if _is_write(ops[i]):
                    results[i] = Busy(f"{ops[i]['op']} {body['name']!r}: the worker went "
                                      "away while serving it; it may or may not have been "
                                      "applied: read it back, then retry", "busy")
                else:
                    again.append(i)
        except MabeamError as exc:
            for i, _ in chunk:
                results[i] = exc
            continue
        else:
            again = []
            got = answer.get("results") if isinstance(answer, dict) else None
            if not isinstance(got, list) or len(got) != len(chunk):
                raise error_for("internal", "a shard endpoint answered a batch with the "
                                "wrong number of results")
            for (i, _), e in zip(chunk, got, strict=True):
                r = element(e)
                if isinstance(r, MabeamError) and r.code in SKIP_AFTER:
                    if r.code == "wrong_shard":
                        stale = r
                    again.append(i)
                else:
                    results[i] = r
        resend += again
        held.update(ops[i]["name"] for i in again)
    return resend, stale


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
        else:
            self.ops = []  # the block failed: nothing of it runs, now or later


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
    if isinstance(names, (str, bytes)) or not all(isinstance(n, str) for n in names):
        raise TypeError("names must be a list of variable names (strings)")
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
    if not isinstance(values, Mapping):
        raise TypeError(f"values must map names to values, not {type(values).__name__}")
    names = list(values)
    results = checked(await run(client, [{"op": "var.set", "agent": agent, "name": n,
                                          "value": values[n]} for n in names]), True)
    return dict(zip(names, results, strict=True))
