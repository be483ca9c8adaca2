"""One shard, served inside its worker: the variable store, its WAL, its snapshot and its
shared-memory segment. The worker is the only writer of all four.

Start-up loads the snapshot, replays the WAL after it, and builds a fresh segment generation
from the result (readers of the previous generation, e.g. one a crashed worker left, carry on
with consistent older data until they switch). A write is validated, appended to the WAL,
applied to the store and published to the segment; its reply waits for `commit()`, which the
worker calls once per batch of requests (group commit).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack

from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, Packed, WireError
from mabeamd.storage import backup, snapshot
from mabeamd.storage.shm import PROGRESS_EVERY, SegmentWriter
from mabeamd.storage.statedir import lock_dir
from mabeamd.storage.variables import (
    ADMIN,
    NAMED_OPS,
    ShardStore,
    Variable,
    check_name,
    check_shard,
)
from mabeamd.storage.wal import WriteAheadLog

log = logging.getLogger(__name__)
LOCK_WAIT = 10.0  # seconds a new worker waits for its shard directory's lock
STORAGE_RETRY = 30.0  # seconds between logging (and snapshot attempts on) a refusing disk
# msgpack of {"op": "put", "var": ...} up to the value of "var": a put's WAL record is this
# and the packed state (test_wal checks it decodes as the map).
PUT_PREFIX = b"\x82\xa2op\xa3put\xa3var"


def _int_or_none(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
        raise WireError(ErrorCode.BAD_REQUEST, f"{key} must be an integer")
    return v


class ShardInUse(Exception):
    pass


class Shard:
    def __init__(self, index: int, state_dir: Path, shm_dir: Path, shm_prefix: str, *,
                 fsync: str, history: int, max_value: int, snapshot_every: int,
                 shards: int = 1, max_variables: int = 1 << 62, max_bytes: int = 1 << 62,
                 progress: Callable[[], None] = lambda: None,
                 shm_group: int | None = None) -> None:
        """Load shard `index` of `shards`. `progress` is called every few thousand records
        while loading and whenever the segment is rebuilt: the worker's sign of life during
        long work."""
        self.index = index
        self.shards = shards
        # Quotas: the shard's live variables, and the bytes of their records (the public
        # map `var.get` answers, as the segment holds it). Refused before anything changes.
        self.max_variables, self.max_bytes = max_variables, max_bytes
        self.storage_error: dict[str, Any] | None = None  # the disk refusing writes, if so
        self._retry_at = 0.0
        self.dir = state_dir / f"shard-{index}"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The only writer of this directory. A predecessor killed a moment ago (kill -9 of the
        # arbiter takes its workers with it, but not in the same instant) gets a few seconds
        # to go; one still there after that is not ours to race.
        try:
            self._lock_fd = lock_dir(self.dir, wait=LOCK_WAIT, poll=progress)
        except BlockingIOError:
            raise ShardInUse(f"shard {index}: {self.dir} is still locked by another process "
                             f"after {LOCK_WAIT:.0f} s (a worker of another mabeamd on this "
                             "state directory?); not loading it") from None
        self.snapshot_every = snapshot_every
        self.locked: dict[str, str] = {}  # variable -> the session holding it (sessions/engine.py)
        t0 = time.monotonic()
        self.store = ShardStore(history, max_value)
        seq, states = snapshot.load(self.dir)
        for k, s in enumerate(states):
            self.store.apply({"op": "put", "var": s})
            if not k & PROGRESS_EVERY:
                progress()
        replayed = 0

        def apply(payload: bytes) -> None:
            nonlocal replayed
            self.store.apply(msgpack.unpackb(payload, raw=False))
            replayed += 1
            if not replayed & PROGRESS_EVERY:
                progress()

        # One read of the log: replayed past the snapshot, then opened to append after it.
        self.wal = WriteAheadLog(self.dir, fsync, after=seq, apply=apply)
        self.since_snapshot = replayed
        self.snapshots = 0  # written by this process (metrics)
        self.snapshot_seconds: float | None = None  # how long the last one took
        self.segment = SegmentWriter(
            shm_dir, shm_prefix, index, slots=max(1024, 2 * len(self.store.vars)),
            records=(v.public() for v in self.store.vars.values()), progress=progress,
            group=shm_group)
        log.info("shard %d: %d variables (snapshot at %d, %d WAL records replayed) in %.0f ms",
                 index, len(self.store.vars), seq, replayed, (time.monotonic() - t0) * 1000)

    # --- requests --------------------------------------------------------------------------

    def handle(self, op: str, body: dict[str, Any], actor: str, now: float,
               ) -> tuple[Any, dict[str, Any] | None]:
        """(result, event) for one request; raises WireError. Writes need commit(). A
        variable comes back as wire.Packed: its segment record, the bytes of its public map."""
        if op in NAMED_OPS:
            self.check_owner(body.get("name"))
        if op == "var.get":
            var = self.store.get(body.get("name"))
            return Packed(self.segment.payload(var.name) or wire.pack(
                var.public())), None
        if op == "var.history":
            return self.store.history_reply(body.get("name")), None
        if op == "var.list":
            return self.store.list_reply(body), None
        if op == "var.snapshot":
            with self._storage():
                return self.take_snapshot(), None
        if op == "var.backup":  # from the arbiter only (mabeamctl backup): not an agent op
            self.wal.sync()
            return backup.write_shard(Path(body["dir"]), self.index, self.wal.next_seq - 1,
                                      [v.state() for v in self.store.vars.values()]), None
        admin = actor == ADMIN
        name = check_name(body.get("name"))
        holder = self.locked.get(name)
        if holder is not None:
            raise WireError(ErrorCode.CONFLICT, f"{name!r} is locked by coordination session "
                            f"{holder} until it ends")
        if op == "var.create":
            if name not in self.store.vars and len(self.store.vars) >= self.max_variables:
                raise WireError(ErrorCode.QUOTA_EXCEEDED, f"shard {self.index} holds "
                                f"{len(self.store.vars)} variables, its limit ([variables] "
                                "max_variables_per_shard); delete some first",
                                details={"limit": self.max_variables})
            effect = self.store.create(
                name, body.get("value"), actor, now, vtype=body.get("type", "any"),
                access=body.get("access", "public"), writers=body.get("writers"),
                policy=body.get("policy", "last_write_wins"),
                constraints=body.get("constraints"))
        elif op == "var.set":
            effect = self.store.set(name, body.get("value"), actor, now,
                                    expect_version=_int_or_none(body, "expect_version"),
                                    via_session=admin)
        elif op == "var.delete":
            effect = self.store.delete(name, actor,
                                       expect_version=_int_or_none(body, "expect_version"),
                                       via_session=admin)
        else:
            raise WireError(ErrorCode.UNKNOWN_OP, f"shard: unknown op {op!r}")
        return self._write(effect, actor)

    def _check_bytes(self, growth: int) -> None:
        used = self.segment.live_bytes
        if growth > 0 and used + growth > self.max_bytes:
            raise WireError(ErrorCode.QUOTA_EXCEEDED, f"shard {self.index} holds {used} bytes "
                            f"of variables; {growth} more would pass its limit of "
                            f"{self.max_bytes} ([variables] max_bytes_per_shard)",
                            details={"limit": self.max_bytes})

    def check_owner(self, name: Any) -> None:
        check_shard(name, self.index, self.shards)

    def _write(self, effect: dict[str, Any], actor: str) -> tuple[Any, dict[str, Any]]:
        if effect["op"] == "put":
            # The new state is packed once: the WAL record embeds it (a map {"op", "var"}
            # whose value is these bytes), the segment publishes it, the reply carries it.
            packed = wire.pack(effect["var"])
            self._check_bytes(len(packed) - self.segment.record_length(effect["var"]["name"]))
            with self._storage():
                self.wal.append(PUT_PREFIX + packed)  # first: the log
        else:
            with self._storage():
                self.wal.append(wire.pack(effect))
        var: Variable | None = self.store.apply(effect)
        if var is None:
            self.segment.delete(effect["name"], effect["version"])
            event = {"name": effect["name"], "op": "delete", "version": effect["version"],
                     "by": actor}
            result: Any = {"name": effect["name"], "deleted": True,
                           "version": effect["version"]}
        else:
            self.segment.put_packed(var.name, packed)
            event = {"name": var.name, "op": "set" if var.version > 1 else "create",
                     "version": var.version, "by": actor, "value": var.value}
            result = Packed(packed)
        self.since_snapshot += 1
        return result, event

    def apply_session(self, session: str, writes: dict[str, Any], now: float,
                      ) -> list[dict[str, Any]]:
        """Apply a session's writes all or nothing: every one is checked first (constraints
        still hold; access rules do not, a session may change any variable it locked), then
        they go to the WAL as one record, so a crash leaves all of them or none. Returns the
        `var.*` events; durable on return."""
        actor = f"session:{session}"
        for name in writes:
            self.check_owner(name)
        effects = [self.store.set(check_name(name), value, actor, now, via_session=True)
                   for name, value in sorted(writes.items())]
        if not effects:
            return []
        records = [wire.pack(e["var"]) for e in effects]
        self._check_bytes(sum(len(r) - self.segment.record_length(e["var"]["name"])
                              for e, r in zip(effects, records, strict=True)))
        with self._storage():
            self.wal.append(wire.pack({"op": "batch", "session": session,
                                           "effects": effects}))
        events = []
        for effect, record in zip(effects, records, strict=True):
            var = self.store.apply(effect)
            assert var is not None
            self.segment.put_packed(var.name, record)  # the public map, as in _write
            events.append({"name": var.name, "op": "set", "version": var.version, "by": actor,
                           "value": var.value})
        self.since_snapshot += len(effects)
        self.commit()
        return events

    def commit(self) -> None:
        self.wal.commit()  # a failure here is not refusable: the caller must not answer
        if self.since_snapshot >= self.snapshot_every and time.monotonic() >= self._retry_at:
            try:
                self.take_snapshot()
            except OSError as exc:  # the WAL still holds everything: try again later
                self._retry_at = time.monotonic() + STORAGE_RETRY
                self._storage_failed(exc, "snapshot")

    @contextlib.contextmanager
    def _storage(self) -> Iterator[None]:
        """Around a write that starts with the WAL: a disk that refuses it (full, quota, I/O
        error) refuses the request with `storage_error` -- nothing was changed, the log
        was cut back to its last whole record -- and is logged once per STORAGE_RETRY
        seconds, not once per request onto the same full disk."""
        try:
            yield
        except OSError as exc:
            self._storage_failed(exc, "write")
            raise WireError(ErrorCode.STORAGE_ERROR, f"shard {self.index} cannot write its "
                            f"log: {exc.strerror or exc}; nothing was changed. Free space or "
                            "fix the disk; writes are accepted again as soon as it takes them",
                            details={"errno": errno.errorcode.get(exc.errno or 0, "EIO")}) \
                from None
        if self.storage_error is not None and self.storage_error["what"] == "write":
            log.warning("shard %d: the disk takes writes again (%d refused since %s)",
                        self.index, self.storage_error["refused"],
                        time.strftime("%H:%M:%S", time.localtime(self.storage_error["since"])))
            self.storage_error = None

    def _storage_failed(self, exc: OSError, what: str) -> None:
        err = self.storage_error
        if err is None or err["what"] != what:
            err = self.storage_error = {"what": what, "since": time.time(), "refused": 0,
                                        "errno": errno.errorcode.get(exc.errno or 0, "EIO"),
                                        "message": exc.strerror or str(exc), "logged": 0.0}
        err["refused"] += 1
        now = time.monotonic()
        if now - err["logged"] >= STORAGE_RETRY:
            err["logged"] = now
            log.error("shard %d: %s refused by the disk: %s (%s); %d so far. Nothing "
                      "acknowledged is lost; %s", self.index, what, err["message"],
                      err["errno"], err["refused"],
                      "writes are refused with storage_error until it takes them"
                      if what == "write" else "the WAL keeps everything; retrying later")

    def storage_state(self) -> dict[str, Any] | None:
        err = self.storage_error
        return None if err is None else {k: v for k, v in err.items() if k != "logged"}

    def gauges(self) -> dict[str, Any]:
        """The shard's figures for metrics (observe/metrics.py), sent with each heartbeat."""
        seg = self.segment.stats()
        return {"variables": len(self.store.vars), "bytes": self.segment.live_bytes,
                "segment_fill": round(seg["data_used"] / seg["data_size"], 6)
                if seg["data_size"] else 0.0,
                "wal_records": self.wal.next_seq - 1, "wal_fsyncs": self.wal.fsyncs,
                "wal_fsync_seconds": round(self.wal.fsync_seconds, 6),
                "wal_append_hist": [*self.wal.append_hist, self.wal.append_seconds],
                "wal_fsync_hist": [*self.wal.fsync_hist, self.wal.fsync_seconds],
                "snapshots": self.snapshots, "snapshot_seconds": self.snapshot_seconds}

    def take_snapshot(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.wal.sync()
        seq = self.wal.next_seq - 1
        states = [v.state() for v in self.store.vars.values()]
        snapshot.write(self.dir, seq, states)
        self.wal.rotate()
        dropped = self.wal.drop_before(seq + 1)
        self.since_snapshot = 0
        self.snapshots += 1
        self.snapshot_seconds = round(time.monotonic() - t0, 6)
        return {"shard": self.index, "seq": seq, "variables": len(states),
                "wal_files_dropped": len(dropped)}

    def tick(self) -> None:
        self.wal.tick()

    def close(self) -> None:
        self.wal.close()
        self.segment.close()
        os.close(self._lock_fd)
