"""Acknowledged writes survive every order of writes, snapshots, restarts and crashes.

A hypothesis state machine drives a real shard (its WAL, snapshot and segment files in a temp
directory) against a dict model: every write the shard acknowledged must come back after any
restart or crash, at the acknowledged version, with the acknowledged value; nothing that was
refused may appear. The machine found the lost write after snapshot + restart + write +
restart (2026-11) in a few examples (tests/e2e/test_restarts.py repeats that report through a
real daemon and mabeamctl).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from mabeamd.net.wire import WireError
from mabeamd.worker.shard import Shard

NAMES = st.sampled_from([f"k/{i}" for i in range(6)])
VALUES = st.one_of(st.integers(-5, 5), st.text(max_size=4), st.none(),
                   st.lists(st.integers(0, 3), max_size=3))


def die(shard: Shard) -> None:
    """What the kernel does for a process killed with -9: its descriptors close (and with
    them its flocks), nothing is flushed or synced, no Python cleanup runs."""
    log = shard.wal
    log._stopping.set()  # the background fsync thread dies with the process
    log._sync_asked.set()
    with log._lock:
        os.close(log._fd)
        log._fd = -1
    shard.segment.close()  # only the mapping: the next generation is a new file
    os.close(shard._lock_fd)


class ShardMachine(RuleBasedStateMachine):
    """The model is name -> (version, value) of the last acknowledged write."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="mb-sm-"))
        (self.tmp / "shm").mkdir()
        self.model: dict[str, tuple[int, Any]] = {}
        self.shard: Shard | None = None
        self.fsync = "always"
        self.snapshot_every = 10_000

    @initialize(fsync=st.sampled_from(["always", "everysec", "never"]),
                snapshot_every=st.sampled_from([1, 3, 10_000]))
    def open_first(self, fsync: str, snapshot_every: int) -> None:
        self.fsync, self.snapshot_every = fsync, snapshot_every
        self._open()

    def _open(self) -> None:
        self.shard = Shard(0, self.tmp / "state", self.tmp / "shm", "mb-sm", fsync=self.fsync,
                           history=4, max_value=1 << 16, snapshot_every=self.snapshot_every)

    def _write(self, op: str, body: dict[str, Any]) -> Any:
        assert self.shard is not None
        try:
            result, _ = self.shard.handle(op, body, "agent-1", 1.0)
        except WireError:
            return None
        self.shard.commit()  # as the worker does before any reply leaves: now acknowledged
        return msgpack.unpackb(result, raw=False) if isinstance(result, bytes) else result

    @rule(name=NAMES, value=VALUES)
    def create(self, name: str, value: Any) -> None:
        out = self._write("var.create", {"name": name, "value": value})
        assert (out is not None) == (name not in self.model)
        if out is not None:
            self.model[name] = (out["version"], value)

    @rule(name=NAMES, value=VALUES, cas=st.booleans())
    def set(self, name: str, value: Any, cas: bool) -> None:
        body: dict[str, Any] = {"name": name, "value": value}
        if cas and name in self.model:
            body["expect_version"] = self.model[name][0]
        out = self._write("var.set", body)
        assert (out is not None) == (name in self.model)
        if out is not None:
            assert out["version"] == self.model[name][0] + 1
            self.model[name] = (out["version"], value)

    @rule(name=NAMES)
    def delete(self, name: str) -> None:
        out = self._write("var.delete", {"name": name})
        assert (out is not None) == (name in self.model)
        self.model.pop(name, None)

    @rule()
    def snapshot(self) -> None:
        assert self.shard is not None
        self.shard.take_snapshot()

    @rule()
    def restart(self) -> None:
        assert self.shard is not None
        self.shard.close()
        self._open()

    @rule()
    def crash(self) -> None:
        """As kill -9 of the worker: nothing closed or flushed by the process (what write(2)
        handed the kernel stays, as it does when a process dies)."""
        assert self.shard is not None
        die(self.shard)
        self.shard = None
        self._open()

    @precondition(lambda self: self.shard is not None)
    @invariant()
    def matches_the_model(self) -> None:
        assert self.shard is not None
        got = {n: (v.version, v.value) for n, v in self.shard.store.vars.items()}
        assert got == self.model
        for name, (version, value) in self.model.items():
            record = msgpack.unpackb(self.shard.segment.payload(name), raw=False)
            assert (record["version"], record["value"]) == (version, value)

    def teardown(self) -> None:
        if self.shard is not None:
            self.shard.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


ShardMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestShardDurability = ShardMachine.TestCase


def test_a_shard_directory_locked_by_another_process_is_not_loaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker never loads (or writes) a shard another live process holds: it waits a
    little for a predecessor to die, then refuses, changing nothing."""
    from mabeamd.worker import shard as shardmod

    (tmp_path / "shm").mkdir()
    s = Shard(0, tmp_path / "state", tmp_path / "shm", "mb-lock", fsync="always", history=4,
              max_value=1 << 16, snapshot_every=100)
    s.handle("var.create", {"name": "x", "value": 1}, "a", 1.0)
    s.commit()
    monkeypatch.setattr(shardmod, "LOCK_WAIT", 0.2)
    files = sorted(p.name for p in (tmp_path / "state" / "shard-0").iterdir())
    with pytest.raises(shardmod.ShardInUse, match="still locked by another process"):
        Shard(0, tmp_path / "state", tmp_path / "shm", "mb-lock", fsync="always", history=4,
              max_value=1 << 16, snapshot_every=100)
    assert sorted(p.name for p in (tmp_path / "state" / "shard-0").iterdir()) == files
    s.close()
    again = Shard(0, tmp_path / "state", tmp_path / "shm", "mb-lock", fsync="always",
                  history=4, max_value=1 << 16, snapshot_every=100)
    assert again.store.get("x").value == 1
    again.close()


def test_shard_quotas_refuse_before_anything_changes(tmp_path: Path) -> None:
    """No quota once let 200,000 creates in 40 s through: a shard at its count or bytes
    limit refuses (quota_exceeded) and its log, store and segment are untouched; deletes
    and shrinking writes still go through."""
    (tmp_path / "shm").mkdir()

    def open_shard() -> Shard:
        return Shard(0, tmp_path / "state", tmp_path / "shm", "mb-q", fsync="always",
                     history=0, max_value=1 << 16, snapshot_every=10_000, max_variables=3,
                     max_bytes=1000)

    s = open_shard()
    for i in range(3):
        s.handle("var.create", {"name": f"q/{i}", "value": i}, "a", 1.0)
    seq = s.wal.next_seq
    with pytest.raises(WireError) as exc:
        s.handle("var.create", {"name": "q/3", "value": 3}, "a", 1.0)
    assert exc.value.code == "quota_exceeded" and exc.value.details == {"limit": 3}
    with pytest.raises(WireError) as exc:
        s.handle("var.set", {"name": "q/0", "value": "x" * 900}, "a", 1.0)
    assert exc.value.code == "quota_exceeded" and "max_bytes_per_shard" in exc.value.message
    assert s.wal.next_seq == seq and s.store.get("q/0").value == 0  # nothing changed
    used = s.segment.live_bytes
    s.handle("var.set", {"name": "q/0", "value": "y" * 200}, "a", 1.0)  # fits
    assert s.segment.live_bytes > used
    s.handle("var.delete", {"name": "q/1"}, "a", 1.0)
    s.handle("var.create", {"name": "q/3", "value": 3}, "a", 1.0)  # room again
    bytes_before = s.segment.live_bytes
    s.commit()
    s.close()
    s = open_shard()  # the accounting is rebuilt from the records at start
    assert s.segment.live_bytes == bytes_before and len(s.store.vars) == 3
    s.close()
