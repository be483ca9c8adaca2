"""One shard in cluster mode, served inside its worker: etcd holds the variables, this is the
node's cache of them.

Every node runs the same shard count, and worker i of every node serves the names of shard i
(`storage/sharding.py`). A write is decided as on one node -- `storage/variables.py` applies
the rules to the cached state and returns the new state -- and then committed by one etcd
transaction that compares the key's mod_revision with the revision of the cached state the
rules saw. If another node wrote first, the compare fails, the transaction's failure branch
returns the key's current state, the cache takes it and the rules run again (a bounded
number of times). So a compare-and-set has exactly one winner per version cluster-wide, and
every acknowledged write is in etcd (Raft: on a majority of members' disks) before its
reply: no WAL here.

The cache is the Kubernetes informer pattern: list the shard's prefix at revision R, then
watch from R + 1. Watch events and this node's own commits both update it, each only if its
mod_revision is newer than what the cache holds, so an old event never undoes a newer write
and a node reads its own writes at once. The cache is published into the shard's segment, so
the SDK's same-host reads work unchanged; what a cached read may miss is the other nodes'
writes of the last moments (docs/cluster.md measures the lag). `var.get` with
`consistent: true` reads through etcd instead (linearizable).

Coordination sessions lock their variables cluster-wide and apply their outcomes as one
transaction: the session half of this class, in `cluster/locks.py`.

The etcd value is the variable's whole state (value, metadata, the history of past versions,
and the node that wrote it), msgpack. History is kept in the value rather than in etcd's own
MVCC history, which compaction removes; it keeps as many of the last `[variables] history`
versions as fit in HISTORY_BYTES.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aetcd.exceptions
import msgpack

from mabeamd.cluster.etcd import (
    DOWN,
    INVALID,
    Keys,
    client,
    idempotent,
    keepalive,
    refused,
    unavailable,
)
from mabeamd.cluster.inorder import InOrder
from mabeamd.cluster.locks import SessionLocks
from mabeamd.cluster.pending import Pending
from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, Packed, WireError
from mabeamd.storage.shm import SegmentWriter
from mabeamd.storage.variables import (
    ADMIN,
    NAMED_OPS,
    ShardStore,
    Variable,
    check_name,
    check_shard,
)

log = logging.getLogger(__name__)

ATTEMPTS: Final = 16  # transactions one write may lose to other nodes' writes before conflict
HISTORY_BYTES: Final = 256 << 10  # past versions kept in a variable's etcd value, at most
RETRY_PAUSE: Final = 0.5  # seconds between attempts to re-open a broken watch


class ClusterShard(SessionLocks):
    def __init__(self, index: int, shards: int, shm_dir: Path, shm_prefix: str, *,
                 etcd: list[str], cluster: str, node: str, timeout: float, history: int,
                 lease_ttl: int = 10,
                 max_value: int, max_variables: int = 1 << 62, max_bytes: int = 1 << 62,
                 progress: Callable[[], None] = lambda: None,
                 shm_group: int | None = None) -> None:
        self.index, self.shards, self.node = index, shards, node
        self.max_variables, self.max_bytes = max_variables, max_bytes
        self.keys = Keys(cluster)
        self.prefix = self.keys.shard(index)
        self.store = ShardStore(history, max_value)
        self.locked: dict[str, str] = {}  # no sessions in cluster mode yet: always empty
        self.storage_error: dict[str, Any] | None = None
        self.etcd = client(etcd, timeout)
        self.timeout = timeout
        self.attempts = len(etcd)  # reads try each member once at most
        self._shm = (shm_dir, shm_prefix, shm_group)
        self._progress = progress
        self.segment: SegmentWriter
        # The cache's revisions: the mod_revision of each cached variable, and for a name
        # seen deleted the revision of that delete (dropped once the watch has passed it).
        self.revs: dict[str, int] = {}
        self.gone: dict[str, int] = {}
        self.revision = 0  # the watch has delivered every change up to this revision
        self.watch_ok = False  # the watch is open (status: a closed one means a stale cache)
        self.watch_events = 0
        self.last_event = 0.0  # time.time() of the last change the watch delivered
        self.lag_samples: list[float] = []  # seconds from a remote write to the cache, recent
        self.emit: Callable[[list[dict[str, Any]]], None] = lambda events: None
        self._order = InOrder()  # writes of one name, one after another
        self._watcher: asyncio.Task[None] | None = None
        self.commits = 0
        self.retries = 0  # transactions lost to another node's write and run again
        # This worker's lease, for its sessions' locks; kept alive every third of its TTL.
        self.lease_ttl = lease_ttl
        self.lease_id: int | None = None
        self._keeper: asyncio.Task[None] | None = None
        self.init_locks()

    # --- start and stop ----------------------------------------------------------------------

    async def load(self) -> None:
        """List the shard's keys, build the segment from them, and start the watch after
        them. Raises what etcd raises (the worker exits and its watcher retries)."""
        t0 = time.monotonic()
        await self.etcd.connect()
        if self.lease_id is None:
            self.lease_id = (await self.etcd.lease(self.lease_ttl)).id
        listed = await self.etcd.get_prefix(self.prefix)
        for kv in listed.kvs:
            self._cache_put(kv.key[len(self.prefix):].decode(), kv.value, kv.mod_revision)
        self.revision = listed.header.revision
        shm_dir, shm_prefix, shm_group = self._shm
        self.segment = SegmentWriter(
            shm_dir, shm_prefix, self.index, slots=max(1024, 2 * len(self.store.vars)),
            records=(v.public() for v in self.store.vars.values()), progress=self._progress,
            group=shm_group)
        self._watcher = asyncio.create_task(self._watch())
        self._keeper = asyncio.create_task(self._keep_lease())
        log.info("shard %d: %d variables from etcd at revision %d in %.0f ms", self.index,
                 len(self.store.vars), self.revision, (time.monotonic() - t0) * 1000)

    async def aclose(self) -> None:
        """Stop the watch and close the client, in at most about three seconds (aetcd's watch
        cancel and close can wait on a member that does not answer; the watch gives its
        cancel one second)."""
        if self._keeper is not None:
            self._keeper.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher], timeout=2.0)
        if self.lease_id is not None:  # our sessions' locks go now, not a TTL from now
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.etcd.revoke_lease(self.lease_id), 1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.etcd.close(), 1.0)

    def close(self) -> None:
        if hasattr(self, "segment"):
            self.segment.close()

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                assert self.lease_id is not None
                if await keepalive(self.etcd, self.lease_id, self.lease_ttl) <= 0:
                    # expired while etcd was out of reach: the locks are gone
                    log.error("shard %d: its lease expired; the locks of its running "
                              "sessions are gone (they will fail, nothing applied)", self.index)
                    self.lease_id = (await self.etcd.lease(self.lease_ttl)).id
            except DOWN as exc:
                log.warning("shard %d: lease keepalive failed: %s", self.index, exc)

    # --- the cache ---------------------------------------------------------------------------

    def _newer(self, name: str, revision: int) -> bool:
        return revision > self.revs.get(name, self.gone.get(name, 0))

    def _cache_put(self, name: str, value: bytes, revision: int) -> tuple[Variable, str]:
        state = msgpack.unpackb(value, raw=False)
        var = self.store.apply({"op": "put", "var": state})
        assert var is not None
        self.revs[name] = revision
        self.gone.pop(name, None)
        return var, str(state.get("node") or "")

    def _cache_delete(self, name: str, revision: int) -> int | None:
        """Forget `name` as of `revision`; its last version, if it was cached."""
        old = self.store.vars.get(name)
        self.store.apply({"op": "delete", "name": name})
        self.revs.pop(name, None)
        self.gone[name] = max(revision, self.gone.get(name, 0))
        if old is None:
            return None
        if hasattr(self, "segment"):
            self.segment.delete(name, old.version + 1)
        return old.version

    async def _watch(self) -> None:
        """Follow the shard's prefix from the listed revision. A broken stream is opened
        again from the last revision seen; one etcd has compacted past is listed afresh."""
        while True:
            try:
                watch = await self.etcd.watch_prefix(self.prefix, start_revision=self.revision + 1)
                self.watch_ok = True
                try:
                    async for event in watch:
                        self._on_event(event)
                finally:
                    self.watch_ok = False
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(watch.cancel(), 1.0)
            except asyncio.CancelledError:
                raise
            except aetcd.exceptions.RevisionCompactedError:
                log.warning("shard %d: etcd compacted past revision %d; listing the shard "
                            "again", self.index, self.revision)
                with contextlib.suppress(*DOWN):
                    await self._relist()
            except DOWN as exc:
                log.warning("shard %d: the etcd watch broke (%s); opening it again from "
                            "revision %d", self.index, exc, self.revision + 1)
            except Exception:
                log.exception("shard %d: the etcd watch failed; opening it again", self.index)
            await asyncio.sleep(RETRY_PAUSE)

    async def _relist(self) -> None:
        listed = await self.etcd.get_prefix(self.prefix)
        seen = set()
        events = []
        for kv in listed.kvs:
            name = kv.key[len(self.prefix):].decode()
            seen.add(name)
            if self._newer(name, kv.mod_revision):
                var, by = self._cache_put(name, kv.value, kv.mod_revision)
                self.segment.put_packed(name, wire.pack(var.public()))
                events.append(self._event(var, by))
        for name in [n for n in self.store.vars if n not in seen]:
            if (version := self._cache_delete(name, listed.header.revision)) is not None:
                events.append({"name": name, "op": "delete", "version": version + 1})
        self.revision = listed.header.revision
        if events:
            self.emit(events)

    def _on_event(self, event: Any) -> None:
        kv = event.kv
        name = kv.key[len(self.prefix):].decode()
        revision = kv.mod_revision
        self.revision = max(self.revision, revision)
        self.watch_events += 1
        self.last_event = time.time()
        if not self._newer(name, revision):
            return  # this node's own write, or older than what the cache has
        if event.kind == "PUT":
            var, by = self._cache_put(name, kv.value, revision)
            self.segment.put_packed(name, wire.pack(var.public()))
            self.lag_samples.append(max(0.0, self.last_event - var.updated_at))
            del self.lag_samples[:-256]
            self.emit([self._event(var, by)])
        else:
            version = self._cache_delete(name, revision)
            if version is not None:
                self.emit([{"name": name, "op": "delete", "version": version + 1,
                            "node": None}])

    @staticmethod
    def _event(var: Variable, node: str) -> dict[str, Any]:
        return {"name": var.name, "op": "set" if var.version > 1 else "create",
                "version": var.version, "by": var.modified_by, "value": var.value,
                "node": node or None}

    def tick(self) -> None:
        """Drop the tombstones the watch has passed: nothing older can arrive any more."""
        if self.gone:
            self.gone = {n: r for n, r in self.gone.items() if r > self.revision}

    # --- requests ----------------------------------------------------------------------------

    def check_owner(self, name: Any) -> None:
        check_shard(name, self.index, self.shards)

    def handle(self, op: str, body: dict[str, Any], actor: str, now: float,
               ) -> tuple[Any, dict[str, Any] | None]:
        """As `worker/shard.py` `Shard.handle`; a write (and a consistent read) answers with
        a `Pending` result the worker awaits."""
        if op in NAMED_OPS:
            self.check_owner(body.get("name"))
        if op == "var.get":
            if body.get("consistent"):
                return Pending(self._get_consistent(check_name(body.get("name")))), None
            var = self.store.get(body.get("name"))
            return Packed(self.segment.payload(var.name) or wire.pack(var.public())), None
        if op == "var.history":
            return self.store.history_reply(body.get("name")), None
        if op == "var.list":
            return self.store.list_reply(body), None
        if op in ("var.snapshot", "var.backup"):
            raise WireError(ErrorCode.BAD_REQUEST, "a cluster keeps its variables in etcd, "
                            "not in snapshots: back it up with `etcdctl snapshot save` "
                            "(docs/cluster.md, Operations)")
        if op not in ("var.create", "var.set", "var.delete"):
            raise WireError(ErrorCode.UNKNOWN_OP, f"shard: unknown op {op!r}")
        name = check_name(body.get("name"))
        holder = self.locked.get(name)
        if holder is not None:
            raise WireError(ErrorCode.CONFLICT, f"{name!r} is locked by coordination session "
                            f"{holder} until it ends")
        return Pending(self._ordered(name, op, body, actor, now)), None

    async def _get_consistent(self, name: str) -> tuple[Any, None]:
        key = self.keys.var(self.index, name)
        try:
            found = await idempotent(lambda: self.etcd.get(key), self.attempts)
        except DOWN as exc:
            raise unavailable(exc, f"reading {name!r}") from None
        if found is None:
            raise WireError(ErrorCode.NOT_FOUND, f"no variable {name!r}")
        if self._newer(name, found.mod_revision):
            var, _ = self._cache_put(name, found.value, found.mod_revision)
            self.segment.put_packed(name, wire.pack(var.public()))
        state = msgpack.unpackb(found.value, raw=False)
        return Variable.from_state(state, self.store.history_len).public(), None

    async def _ordered(self, name: str, op: str, body: dict[str, Any], actor: str,
                       now: float) -> tuple[Any, dict[str, Any] | None]:
        """Writes of one name run one after another, in arrival order (a client that sends
        two sets without waiting gets them applied in the order sent); other names' writes
        run alongside."""
        return await self._order.run(name, lambda: self._write(name, op, body, actor, now))

    def _effect(self, name: str, op: str, body: dict[str, Any], actor: str,
                now: float) -> dict[str, Any]:
        store = self.store
        if op == "var.create":
            if name not in store.vars and len(store.vars) >= self.max_variables:
                raise WireError(ErrorCode.QUOTA_EXCEEDED, f"shard {self.index} holds "
                                f"{len(store.vars)} variables, its limit ([variables] "
                                "max_variables_per_shard); delete some first",
                                details={"limit": self.max_variables})
            return store.create(name, body.get("value"), actor, now,
                                vtype=body.get("type", "any"),
                                access=body.get("access", "public"),
                                writers=body.get("writers"),
                                policy=body.get("policy", "last_write_wins"),
                                constraints=body.get("constraints"))
        expect = body.get("expect_version")
        if expect is not None and (isinstance(expect, bool) or not isinstance(expect, int)):
            raise WireError(ErrorCode.BAD_REQUEST, "expect_version must be an integer")
        if op == "var.set":
            return store.set(name, body.get("value"), actor, now, expect_version=expect,
                             via_session=actor == ADMIN)
        return store.delete(name, actor, expect_version=expect, via_session=actor == ADMIN)

    def _full_state(self, effect: dict[str, Any]) -> dict[str, Any]:
        """The new state with its history (the old version appended, as the store would)
        and the writing node: the etcd value."""
        state = dict(effect["var"])
        old = self.store.vars.get(state["name"])
        past: list[list[Any]] = [list(h) for h in old.history] if old is not None else []
        if old is not None and old.version < state["version"]:
            past.append([old.version, old.value, old.modified_by, old.updated_at])
        past = past[-self.store.history_len:] if self.store.history_len else []
        while past and len(wire.pack(past)) > HISTORY_BYTES:
            del past[0]
        state["history"] = past
        state["node"] = self.node
        return state

    async def _write(self, name: str, op: str, body: dict[str, Any], actor: str,
                     now: float) -> tuple[Any, dict[str, Any] | None]:
        key = self.keys.var(self.index, name)
        lock = self.keys.lock(self.index, name)
        tx = self.etcd.transactions
        looked = False
        for _ in range(ATTEMPTS):
            try:
                effect = self._effect(name, op, body, actor, now)  # refusals raise from here
            except WireError as exc:
                # Not in the cache is not "not in etcd": another node's create may not have
                # reached this node's watch yet. Ask etcd once before saying not_found.
                if exc.code != ErrorCode.NOT_FOUND or op == "var.create" or looked:
                    raise
                looked = True
                if await self._fetch(name, key, f"writing {name!r}"):
                    continue
                raise
            expect = self.revs.get(name, 0) if name in self.store.vars else 0
            value = b""
            if effect["op"] == "put":
                state = self._full_state(effect)
                value = wire.pack(state)
                public = wire.pack(effect["var"])
                growth = len(public) - (self.segment.record_length(name))
                if growth > 0 and self.segment.live_bytes + growth > self.max_bytes:
                    raise WireError(ErrorCode.QUOTA_EXCEEDED, f"shard {self.index} holds "
                                    f"{self.segment.live_bytes} bytes of variables; {growth} "
                                    f"more would pass its limit of {self.max_bytes}",
                                    details={"limit": self.max_bytes})
                success = [tx.put(key, value)]
            else:
                success = [tx.delete(key)]
            try:
                won, answers = await self.etcd.transaction(
                    compare=[tx.mod(key) == expect, tx.version(lock) == 0], success=success,
                    failure=[tx.get(key), tx.get(lock)])
            except INVALID as exc:
                raise refused(exc, f"the write of {name!r}") from None
            except DOWN as exc:
                settled = await self._settle(name, key, value, expect)
                if settled is None:
                    raise unavailable(exc, f"writing {name!r}", applied=None) from None
                if settled == 0:
                    continue  # not applied, and etcd answers again: run it again
                return self._committed(name, effect, value, settled, actor)
            if won:
                head = answers[0].response_put.header if effect["op"] == "put" \
                    else answers[0].response_delete_range.header
                self.commits += 1
                return self._committed(name, effect, value, head.revision, actor)
            self.retries += 1
            if len(answers) > 1 and answers[1]:
                held = msgpack.unpackb(answers[1][0][0], raw=False)
                raise WireError(ErrorCode.CONFLICT, f"{name!r} is locked by coordination "
                                f"session {held.get('session')} (node {held.get('node')}) "
                                "until it ends")
            found = answers[0] if answers else []
            if found:
                raw, meta = found[0]
                if self._newer(name, meta.mod_revision):
                    var, _ = self._cache_put(name, raw, meta.mod_revision)
                    self.segment.put_packed(name, wire.pack(var.public()))
            elif name in self.store.vars:
                self._cache_delete(name, self.revs.get(name, 0) + 1)
        raise WireError(ErrorCode.CONFLICT, f"{name!r} was changed by other nodes {ATTEMPTS} "
                        "times while this write was being applied; nothing was changed by it, "
                        "try again")

    async def _fetch(self, name: str, key: bytes, doing: str) -> bool:
        """Read `name` from etcd into the cache: True if etcd has it (cached now, if newer
        than what the cache had), False if it has not; `unavailable` when etcd does not
        answer."""
        try:
            found = await idempotent(lambda: self.etcd.get(key), self.attempts)
        except DOWN as exc:
            raise unavailable(exc, doing) from None
        if found is None:
            return False
        if self._newer(name, found.mod_revision):
            var, _ = self._cache_put(name, found.value, found.mod_revision)
            self.segment.put_packed(name, wire.pack(var.public()))
        return True

    async def _settle(self, name: str, key: bytes, value: bytes, expect: int) -> int | None:
        """After a transaction whose answer was lost: the revision it was committed at, 0 if
        it certainly was not (the key is still at `expect`), None if that cannot be told (etcd
        does not answer, or the key moved on: ours or another node's write). One try: a write
        refused this way takes at most two request timeouts (round_robin sends this read to
        another member than the transaction's)."""
        try:
            found = await self.etcd.get(key)
        except DOWN:
            return None
        if found is None:
            return None if expect else 0  # a delete that may be ours; a create that is not
        if found.mod_revision == expect:
            return 0
        if value and found.value == value:  # our exact state: timestamp, writer and all
            return int(found.mod_revision)
        return None

    def _committed(self, name: str, effect: dict[str, Any], value: bytes, revision: int,
                   actor: str) -> tuple[Any, dict[str, Any]]:
        """Our transaction won at `revision`: into the cache and the segment, then the
        reply and the event (the watch will bring the same change again: skipped, as old)."""
        if effect["op"] == "put":
            if self._newer(name, revision):
                var, _ = self._cache_put(name, value, revision)
                packed = wire.pack(var.public())
                self.segment.put_packed(name, packed)
            else:
                packed = wire.pack(effect["var"])
            version = effect["var"]["version"]
            return Packed(packed), {"name": name, "op": "set" if version > 1 else "create",
                                    "version": version, "by": actor,
                                    "value": effect["var"]["value"], "node": self.node}
        if self._newer(name, revision):
            self._cache_delete(name, revision)
        return ({"name": name, "deleted": True, "version": effect["version"]},
                {"name": name, "op": "delete", "version": effect["version"], "by": actor,
                 "node": self.node})

    # --- figures -----------------------------------------------------------------------------

    def commit(self) -> None:
        """Nothing to make durable: etcd committed every write before its reply."""

    def storage_state(self) -> dict[str, Any] | None:
        return None

    def gauges(self) -> dict[str, Any]:
        seg = self.segment.stats()
        lags = sorted(self.lag_samples)
        return {"variables": len(self.store.vars), "bytes": self.segment.live_bytes,
                "segment_fill": round(seg["data_used"] / seg["data_size"], 6)
                if seg["data_size"] else 0.0,
                "cluster": {"revision": self.revision, "watch": self.watch_ok,
                            "watch_events": self.watch_events, "commits": self.commits,
                            "retries": self.retries, "last_event": self.last_event,
                            "lag_p50": lags[len(lags) // 2] if lags else None,
                            "lag_max": lags[-1] if lags else None}}
