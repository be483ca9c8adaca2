"""The asyncio client's universal-variable methods (AsyncClient inherits them): one op each,
on the shard route when there is one (aio.py `_var`), batches through pipeline.py, and
same-host reads from shared memory (local.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import zmq
import zmq.asyncio

from mabeamd.client import pipeline as batching
from mabeamd.client.bodies import create_body, write_body
from mabeamd.client.errors import MabeamError, NotFound
from mabeamd.net import wire

if TYPE_CHECKING:
    from mabeamd.client.aio import AsyncClient
    from mabeamd.client.local import LocalReads


class VariableMethods:
    if TYPE_CHECKING:  # what AsyncClient provides
        shards: int
        events_endpoint: str | None
        _ctx: zmq.Context[zmq.Socket[Any]] | None
        _local: LocalReads

        async def _var(self, op: str, body: dict[str, Any], agent: str | None = None,
                       ) -> Any: ...

        async def request(self, op: str, body: dict[str, Any] | None = None,
                          timeout: float | None = None) -> Any: ...

    def _client(self) -> AsyncClient:
        """This object as the AsyncClient it is (the pipeline takes the whole client)."""
        return cast("AsyncClient", self)

    async def create_var(self, agent: str, name: str, value: Any = None, *, type: str = "any",
                         access: str = "public", writers: list[str] | None = None,
                         policy: str = "last_write_wins",
                         constraints: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a variable owned by `agent` (one of ours). Raises Exists if it exists."""
        body = self.create_body(agent, name, value, type=type, access=access, writers=writers,
                                policy=policy, constraints=constraints)
        result: dict[str, Any] = await self._var("var.create", body, agent)
        return result

    create_body = staticmethod(create_body)

    async def get_var(self, name: str, *, local: bool = True,
                      consistent: bool = False) -> dict[str, Any]:
        """The variable (value, version and metadata). Same host: read from shared memory
        with no round trip when the daemon's segments can be mapped; else over the wire.
        consistent=True: a linearizable read (cluster mode: through etcd, so it sees every
        write acknowledged anywhere before it; never from shared memory)."""
        if consistent:
            reply: dict[str, Any] = await self._var("var.get", {"name": name,
                                                                "consistent": True})
            return reply
        if local and self.shards:
            found = self._local_get(name)
            if found is not None:
                return found
        result: dict[str, Any] = await self._var("var.get", {"name": name})
        return result

    def _local_get(self, name: str) -> dict[str, Any] | None:
        """None means "ask the daemon" (not mappable here, or the segment is busy)."""
        try:
            return self._local.get(name)
        except KeyError:
            raise NotFound(f"no variable {name!r}", "not_found") from None

    async def set_var(self, agent: str, name: str, value: Any, *,
                      expect_version: int | None = None) -> dict[str, Any]:
        """Set as `agent`; with expect_version it is a compare-and-set (VersionMismatch)."""
        body = write_body(agent, name, expect_version, value=value)
        result: dict[str, Any] = await self._var("var.set", body, agent)
        return result

    async def delete_var(self, agent: str, name: str, *,
                         expect_version: int | None = None) -> dict[str, Any]:
        body = write_body(agent, name, expect_version)
        result: dict[str, Any] = await self._var("var.delete", body, agent)
        return result

    async def batch(self, ops: Sequence[dict[str, Any]]) -> list[Any]:
        """Variable ops ({"op": "var.get"/"var.history"/"var.create"/"var.set"/"var.delete",
        ...its body}) in one message per shard, each on its own, in order per variable (not
        a transaction): each op's result or MabeamError, returned (client/pipeline.py)."""
        return await batching.run(self._client(), ops)

    def pipeline(self) -> batching.Pipeline:
        """Queue ops, run them as one batch: `async with client.pipeline() as p: ...`."""
        return batching.Pipeline(self._client())

    async def get_many(self, names: Sequence[str], *, local: bool = True,
                       ) -> dict[str, dict[str, Any] | None]:
        """Each variable by name, None where there is none (one batch for what shared
        memory cannot answer)."""
        return await batching.get_many(self._client(), names, self._local_get if local else None)

    async def set_many(self, agent: str, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Set several variables as `agent`, each on its own; BatchError if any failed."""
        return await batching.set_many(self._client(), agent, values)

    async def list_vars(self, prefix: str = "", *, after: str = "", limit: int = 100,
                        ) -> dict[str, Any]:
        """One page: {"vars": [...], "next": cursor or None}."""
        result: dict[str, Any] = await self.request(
            "var.list", {"prefix": prefix, "after": after, "limit": limit})
        return result

    async def var_history(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._var("var.history", {"name": name})
        return result

    async def watch_vars(self, prefix: str = "") -> AsyncIterator[dict[str, Any]]:
        """Changes to variables whose names start with `prefix`, as they happen (events
        `var.<name>` from the daemon's event endpoint)."""
        if not self.events_endpoint:
            raise MabeamError("the daemon has no event endpoint (or no hello was made yet)")
        assert self._ctx is not None
        sub = zmq.asyncio.Context.shadow(self._ctx.underlying).socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, f"var.{prefix}".encode())
        sub.connect(self.events_endpoint)
        try:
            while True:
                _topic, body = await sub.recv_multipart()
                yield wire.unpack(body, max_size=1 << 30)
        finally:
            sub.close(linger=0)

