"""The synchronous client: an AsyncClient driven by its own event-loop thread.

Every call is handed to that loop and waited for, so heartbeats and re-registration keep
running while the caller's thread does other work, and the ZeroMQ socket is only ever used
from one thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from mabeamd.client import pipeline as batching
from mabeamd.client.aio import AsyncClient
from mabeamd.client.bodies import Push, write_body
from mabeamd.client.errors import Busy, NotRegistered, Timeout, WrongShard, result_of
from mabeamd.client.routes import Lost, NoRoute, ThreadRoutes, direct_fallback, shared_context
from mabeamd.net import wire

T = TypeVar("T")


class Client:
    def __init__(self, endpoint: str | Sequence[str] | None = None, *, timeout: float = 10.0,
                 server_key: bytes | None = None,
                 client_keys: tuple[bytes, bytes] | None = None, heartbeat: bool = True,
                 direct: bool = True, prefault: bool = False) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mabeamd-client",
                                        daemon=True)
        self._thread.start()
        self._pushes: queue.Queue[Push] = queue.Queue()
        self._local_lock = threading.Lock()
        self.aio = AsyncClient(endpoint, timeout=timeout, server_key=server_key,
                               client_keys=client_keys, heartbeat=heartbeat, direct=direct,
                               prefault=prefault)
        self.aio.on_push = self._pushes.put
        self.timeout = timeout
        self._run(self.aio.connect())
        # Variable requests on shard routes wait in the caller's thread (see ThreadRoutes).
        self._threads = ThreadRoutes(shared_context()) \
            if self.aio._routes is not None else None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        # The coroutine enforces the request timeout itself; this bound is only a backstop.
        return fut.result(None if timeout is None else timeout + 5)

    def request(self, op: str, body: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        return self._run(self.aio.request(op, body, timeout))

    def register(self, agent: str, capabilities: list[str] | tuple[str, ...] = (),
                 *, metadata: dict[str, Any] | None = None, weight: float = 1.0,
                 priority: int = 0, token: str | None = None) -> dict[str, Any]:
        return self._run(self.aio.register(agent, capabilities, metadata=metadata,
                                           weight=weight, priority=priority, token=token))

    def bye(self, agent: str) -> None:
        self._run(self.aio.bye(agent))

    def get_agent(self, agent: str) -> dict[str, Any]:
        return self._run(self.aio.get_agent(agent))

    def list_agents(self, **query: Any) -> dict[str, Any]:
        return self._run(self.aio.list_agents(**query))

    def discover(self, **query: Any) -> list[dict[str, Any]]:
        async def collect() -> list[dict[str, Any]]:
            return [a async for a in self.aio.discover(**query)]
        return self._run(collect())

    def wait_for(self, count: int = 1, timeout: float = 10.0, **query: Any,
                 ) -> list[dict[str, Any]]:
        return self._run(self.aio.wait_for(count, timeout, **query))

    def send(self, sender: str, to: str, body: Any, topic: str = "") -> dict[str, Any]:
        return self._run(self.aio.send(sender, to, body, topic))

    def _var(self, op: str, body: dict[str, Any], agent: str | None = None) -> Any:
        """AsyncClient._var, waiting in this thread: the shard's route if there is one, else
        (or when it cannot serve the request) the agent endpoint through the loop."""
        target = self.aio.direct_target(body, agent)
        routes = self.aio._routes
        if target is not None and self._threads is not None and routes is not None:
            rid = next(self.aio._ids)
            addresses = routes.addresses
            try:
                header, reply = self._threads.call(
                    addresses, target[0], rid, wire.encode({"id": rid, "op": op}, target[1]),
                    self.timeout)
                return result_of(header, reply)
            except TimeoutError:
                raise Timeout(f"{op}: no reply from {addresses[target[0]]} in "
                              f"{self.timeout:g}s") from None
            except (NoRoute, Lost, Busy, NotRegistered, WrongShard) as exc:
                direct_fallback(exc, op, body, agent, self.aio.shards)
        return self._run(self.aio.request(op, body))

    def create_var(self, agent: str, name: str, value: Any = None, *, type: str = "any",
                   access: str = "public", writers: list[str] | None = None,
                   policy: str = "last_write_wins",
                   constraints: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._var("var.create", self.aio.create_body(
            agent, name, value, type=type, access=access, writers=writers, policy=policy,
            constraints=constraints), agent)
        return result

    def get_var(self, name: str, *, local: bool = True,
                consistent: bool = False) -> dict[str, Any]:
        if consistent:  # AsyncClient.get_var says what it is
            reply: dict[str, Any] = self._var("var.get", {"name": name, "consistent": True})
            return reply
        if local and self.aio.shards:
            # Read shared memory in the caller's thread: a hop to the loop thread would cost
            # more than the read itself. One lock: a SegmentReader is not thread-safe.
            with self._local_lock:
                found = self.aio._local_get(name)
            if found is not None:
                return found
        result: dict[str, Any] = self._var("var.get", {"name": name})
        return result

    def set_var(self, agent: str, name: str, value: Any, *,
                expect_version: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._var(
            "var.set", write_body(agent, name, expect_version, value=value), agent)
        return result

    def delete_var(self, agent: str, name: str, *,
                   expect_version: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._var("var.delete", write_body(agent, name, expect_version),
                                           agent)
        return result

    def batch(self, ops: Sequence[dict[str, Any]]) -> list[Any]:
        """AsyncClient.batch: each op's result or MabeamError, in order."""
        return self._run(batching.run(self.aio, ops))

    def pipeline(self) -> SyncPipeline:
        """Queue ops, run them as one batch: `with client.pipeline() as p: ...`."""
        return SyncPipeline(self)

    def get_many(self, names: Sequence[str], *, local: bool = True,
                 ) -> dict[str, dict[str, Any] | None]:
        """Each variable by name, None where there is none."""
        return self._run(batching.get_many(self.aio, names,
                                           self._locked_local_get if local else None))

    def _locked_local_get(self, name: str) -> dict[str, Any] | None:
        with self._local_lock:  # a SegmentReader is not thread-safe (see get_var)
            return self.aio._local_get(name)

    def set_many(self, agent: str, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Set several variables as `agent`, each on its own; BatchError if any failed."""
        return self._run(batching.set_many(self.aio, agent, values))

    def list_vars(self, prefix: str = "", **kw: Any) -> dict[str, Any]:
        return self._run(self.aio.list_vars(prefix, **kw))

    def var_history(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._var("var.history", {"name": name})
        return result

    def start_session(self, agent: str, protocol: str, **options: Any) -> dict[str, Any]:
        wait = options.get("wait", True)
        limit = (options.get("deadline") or 3600.0) + 5.0 + self.aio.timeout if wait else None
        return self._run(self.aio.start_session(agent, protocol, **options), limit)

    def get_session(self, session: str) -> dict[str, Any]:
        return self._run(self.aio.get_session(session))

    def cancel_session(self, agent: str, session: str, reason: str | None = None,
                       ) -> dict[str, Any]:
        return self._run(self.aio.cancel_session(agent, session, reason))

    def respond(self, agent: str, session: str, round: int, response: Any, *,
                shard: int | None = None) -> dict[str, Any]:
        return self._run(self.aio.respond(agent, session, round, response, shard=shard))

    def heartbeat(self) -> dict[str, Any]:
        return self._run(self.aio.heartbeat())

    def failover(self) -> str:
        """Move to the next endpoint now (AsyncClient.failover); returns it."""
        return self._run(self.aio.failover())

    def next_push(self, timeout: float | None = None) -> Push:
        try:
            return self._pushes.get(timeout=timeout)
        except queue.Empty:
            raise Timeout("no push message in time") from None

    def close(self) -> None:
        if self._threads is not None:
            self._threads.close()
        if self._loop.is_running():
            self._run(self.aio.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncPipeline(batching.Ops):
    """client/pipeline.py's Pipeline for the blocking client:

        with client.pipeline() as p:
            p.set("a1", "x", 1).get("y")
        x, y = p.results
    """

    def __init__(self, client: Client) -> None:
        super().__init__(client.aio)
        self._sync = client

    def execute(self, *, raise_on_error: bool = True) -> list[Any]:
        """Run the queued ops (and empty the queue): Pipeline.execute."""
        ops, self.ops = self.ops, []
        self.results = self._sync._run(batching.run(self._client, ops)) if ops else []
        return batching.checked(self.results, raise_on_error)

    def __enter__(self) -> SyncPipeline:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.execute()
        else:
            self.ops = []  # the block failed: nothing of it runs, now or later
