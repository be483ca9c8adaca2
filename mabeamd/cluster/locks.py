"""The session half of a cluster shard (`cluster/shard.py` ClusterShard): cluster-wide
locks for a coordination session's variables and its outcome as one transaction.

Coordination sessions run in the worker of their variables' shard, as on one node
(`sessions/engine.py`), and lock their variables cluster-wide: keys locks/SHARD/NAME, created
together by one create-only transaction on this worker's own lease (so a worker or node that
dies frees its sessions' locks when the lease runs out). Every write's transaction also
requires the name's lock key to be absent, so another node's write to a locked variable is
refused `conflict`. The outcome is one transaction that compares every lock (still this
session's) and every written variable's mod_revision, then puts them all and deletes the
locks: applied whole, or not at all -- even if the node dies half-way, since etcd applies a
transaction atomically. A session may lock at most MAX_SESSION_VARIABLES variables (etcd's
default --max-txn-ops is 128: a put and a delete per variable), and its outcome must fit in
etcd's request limit.

A mixin rather than a class of its own because both halves work on the same cache and the
same etcd client, and the session engine calls them on the one shard object it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, Final

import msgpack

from mabeamd.cluster.etcd import DOWN, INVALID, refused, unavailable
from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, WireError
from mabeamd.storage.variables import check_name

if TYPE_CHECKING:
    import aetcd

    from mabeamd.cluster.etcd import Keys
    from mabeamd.storage.shm import SegmentWriter
    from mabeamd.storage.variables import ShardStore, Variable

MAX_SESSION_VARIABLES: Final = 64  # a put and a lock delete each: etcd's 128 ops a transaction
MAX_OUTCOME_BYTES: Final = 1_400_000  # an outcome's transaction, under etcd's 1.5 MiB


class SessionLocks:
    if TYPE_CHECKING:  # what the host class (ClusterShard) provides
        index: int
        node: str
        etcd: aetcd.Client
        keys: Keys
        lease_id: int | None
        store: ShardStore
        revs: dict[str, int]
        segment: SegmentWriter

        def check_owner(self, name: Any) -> None: ...
        def _full_state(self, effect: dict[str, Any]) -> dict[str, Any]: ...
        async def _settle(self, name: str, key: bytes, value: bytes,
                          expect: int) -> int | None: ...
        def _newer(self, name: str, revision: int) -> bool: ...
        def _cache_put(self, name: str, value: bytes,
                       revision: int) -> tuple[Variable, str]: ...

    def init_locks(self) -> None:
        self.session_locks: dict[str, tuple[list[str], bytes]] = {}  # session -> names, value
        self.max_session_variables = MAX_SESSION_VARIABLES
        self._unlocking: set[asyncio.Task[None]] = set()


    async def lock_session(self, session: str, names: list[str], *, wait: bool,
                           deadline: float) -> None:
        """Lock `names` cluster-wide for `session` (this node's engine has locked them here
        already). Another node's session holding one: `conflict`, or with wait, try again
        until `deadline` (monotonic; then asyncio.TimeoutError, as a queued session's)."""
        if len(names) > self.max_session_variables:
            raise WireError(ErrorCode.BAD_REQUEST, f"a session in cluster mode locks at most "
                            f"{self.max_session_variables} variables (etcd's --max-txn-ops), "
                            f"not {len(names)}")
        value = msgpack.packb({"session": session, "node": self.node, "shard": self.index})
        tx = self.etcd.transactions
        locks = [self.keys.lock(self.index, n) for n in names]
        while True:
            try:
                won, answers = await self.etcd.transaction(
                    compare=[tx.version(k) == 0 for k in locks],
                    success=[tx.put(k, value, lease=self.lease_id) for k in locks],
                    failure=[tx.get(k) for k in locks])
            except DOWN as exc:
                raise unavailable(exc, f"locking {len(names)} variables") from None
            if won:
                self.session_locks[session] = (list(names), value)
                return
            held = [(n, msgpack.unpackb(a[0][0], raw=False))
                    for n, a in zip(names, answers, strict=True) if a]
            if not wait:
                raise WireError(ErrorCode.CONFLICT, "variables locked by sessions on other "
                                "nodes: " + ", ".join(f"{n} ({h.get('session')} on node "
                                                      f"{h.get('node')})" for n, h in held))
            if time.monotonic() >= deadline:
                raise asyncio.TimeoutError
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def unlock_session(self, session: str) -> None:
        """The session ended without an outcome applied: free its locks (in the background;
        the lease frees them anyway should etcd not answer)."""
        held = self.session_locks.pop(session, None)
        if held is None:
            return
        names, value = held
        tx = self.etcd.transactions

        async def unlock() -> None:
            with contextlib.suppress(*DOWN):
                for n in names:
                    k = self.keys.lock(self.index, n)
                    await self.etcd.transaction(compare=[tx.value(k) == value],
                                                success=[tx.delete(k)], failure=[])

        task = asyncio.ensure_future(unlock())
        self._unlocking.add(task)
        task.add_done_callback(self._unlocking.discard)

    async def apply_session(self, session: str, writes: dict[str, Any], now: float,
                            ) -> list[dict[str, Any]]:
        """The outcome, all or nothing: one transaction that requires every lock to be
        still this session's and every written variable unchanged since, then writes them
        all and frees the locks. Returns the `var.*` events; committed on return."""
        actor = f"session:{session}"
        names, lock_value = self.session_locks.get(session, ([], b""))
        if not names:
            raise WireError(ErrorCode.CONFLICT, f"session {session} holds no locks in etcd; "
                            "nothing was applied")
        for name in writes:
            self.check_owner(name)
        effects = [self.store.set(check_name(n), v, actor, now, via_session=True)
                   for n, v in sorted(writes.items())]
        states = [self._full_state(e) for e in effects]
        values = [wire.pack(s) for s in states]
        if sum(map(len, values)) > MAX_OUTCOME_BYTES:
            raise WireError(ErrorCode.TOO_LARGE, f"the outcome's {sum(map(len, values))} "
                            "bytes pass etcd's request limit; nothing was applied")
        tx = self.etcd.transactions
        keys = [self.keys.var(self.index, s["name"]) for s in states]
        locks = [self.keys.lock(self.index, n) for n in names]
        compare = [tx.value(k) == lock_value for k in locks] + \
            [tx.mod(k) == self.revs.get(s["name"], 0) for k, s in zip(keys, states, strict=True)]
        revision: int | None = 0
        try:
            won, answers = await self.etcd.transaction(
                compare=compare,
                success=[tx.put(k, v) for k, v in zip(keys, values, strict=True)] +
                [tx.delete(k) for k in locks], failure=[])
            if won and values:  # every key of one transaction has its revision
                revision = answers[0].response_put.header.revision
        except INVALID as exc:
            raise refused(exc, f"session {session}'s outcome") from None
        except DOWN as exc:
            revision = await self._settle(states[0]["name"], keys[0], values[0], -1) \
                if values else None
            if not revision:
                raise unavailable(exc, f"applying session {session}'s outcome",
                                  applied=None) from None
            won = True
        if not won:
            raise WireError(ErrorCode.CONFLICT, f"session {session}: its locks were lost (its "
                            "worker's lease expired) or a variable changed; nothing was "
                            "applied")
        self.session_locks.pop(session, None)
        assert revision is not None
        events = []
        for state, value in zip(states, values, strict=True):
            name = state["name"]
            if self._newer(name, revision):
                var, _ = self._cache_put(name, value, revision)
                self.segment.put_packed(name, wire.pack(var.public()))
            events.append({"name": name, "op": "set", "version": state["version"],
                           "by": actor, "value": state["value"], "node": self.node})
        return events
