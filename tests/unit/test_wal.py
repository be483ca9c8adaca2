"""The write-ahead log: round trips, torn tails, corruption, rotation, and kill -9."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mabeamd.storage import wal
from mabeamd.storage.wal import WalCorrupt, WriteAheadLog, replay


@pytest.mark.parametrize("policy", wal.POLICIES)
def test_round_trip(tmp_path: Path, policy: str) -> None:
    log = WriteAheadLog(tmp_path, policy)
    payloads = [os.urandom(random.Random(i).randrange(200)) for i in range(100)]
    seqs = [log.append(p) for p in payloads]
    log.commit()
    assert seqs == list(range(1, 101))
    if policy == "always":
        assert log.fsyncs >= 1
    log.close()
    assert list(replay(tmp_path)) == list(zip(seqs, payloads, strict=True))
    assert [s for s, _ in replay(tmp_path, after=90)] == list(range(91, 101))
    again = WriteAheadLog(tmp_path, policy)
    assert again.append(b"next") == 101
    again.close()


def test_group_commit_is_one_fsync(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, "always")
    before = log.fsyncs
    for i in range(50):
        log.append(b"x%d" % i)
    log.commit()
    assert log.fsyncs == before + 1
    log.commit()  # nothing new: no fsync
    assert log.fsyncs == before + 1
    log.close()


def test_everysec_syncs_at_most_once_a_second(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, "everysec")
    base = log.fsyncs
    log.append(b"a")
    log.commit()
    assert log.fsyncs == base  # commit does not fsync under everysec
    now = time.monotonic()
    log.tick(now + 0.5)
    assert log.fsyncs == base
    log.tick(now + 1.5)
    deadline = time.monotonic() + 5
    while log.fsyncs == base and time.monotonic() < deadline:  # the background thread
        time.sleep(0.001)
    assert log.fsyncs == base + 1
    log.tick(now + 3.0)  # nothing appended since: nothing to sync
    log.append(b"b")
    log.tick(now + 2.0)  # within a second of the last sync (at 1.5): not yet
    time.sleep(0.05)
    assert log.fsyncs == base + 1
    log.close()  # joins the thread and syncs what is left
    assert log.fsyncs == base + 2
    assert [p for _, p in replay(tmp_path)] == [b"a", b"b"]


def test_a_failed_background_fsync_refuses_later_writes(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection (an EIO from fsync cannot be had for real here): once the background
    fsync fails, appends raise instead of acknowledging writes on a log that may not be
    durable."""
    log = WriteAheadLog(tmp_path, "everysec")
    log.append(b"a")

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(wal.os, "fsync", broken)
    log.tick(time.monotonic() + 2)
    deadline = time.monotonic() + 5
    while log.failed is None and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(OSError, match="background fsync failed"):
        log.append(b"b")
    monkeypatch.undo()
    log.close()
    assert [p for _, p in replay(tmp_path)] == [b"a"]


@pytest.mark.parametrize("cut", ["mid-header", "mid-payload", "garbage"])
def test_torn_tail_is_discarded_and_log_continues(tmp_path: Path, cut: str) -> None:
    log = WriteAheadLog(tmp_path, "always")
    for i in range(10):
        log.append(b"record-%d" % i)
    log.commit()
    log.close()
    path = wal.wal_files(tmp_path)[-1]
    size = path.stat().st_size
    with open(path, "ab") as f:
        if cut == "garbage":
            f.write(os.urandom(37))
        else:
            full = wal.REC.pack(100, 0, 11) + b"y" * 100
            f.write(full[: 7 if cut == "mid-header" else 40])
    assert [s for s, _ in replay(tmp_path)] == list(range(1, 11))
    assert path.stat().st_size == size  # truncated back to the last good record
    log = WriteAheadLog(tmp_path, "always")
    assert log.append(b"after") == 11
    log.close()
    assert list(replay(tmp_path))[-1] == (11, b"after")


def test_corruption_before_the_end_refuses(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, "never", rotate_bytes=200)
    for i in range(40):
        log.append(b"payload-%02d" % i)
    log.close()
    files = wal.wal_files(tmp_path)
    assert len(files) > 2
    data = bytearray(files[0].read_bytes())
    data[30] ^= 0xFF  # flip a byte inside the first file
    files[0].write_bytes(bytes(data))
    with pytest.raises(WalCorrupt, match="later files exist"):
        list(replay(tmp_path))


def test_rotation_and_drop_before(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, "never", rotate_bytes=1 << 20)
    for i in range(5):
        log.append(b"%d" % i)
    first_new = log.rotate()
    assert first_new == 6
    log.append(b"5")
    assert len(wal.wal_files(tmp_path)) == 2
    dropped = log.drop_before(first_new)  # a snapshot covers 1..5
    assert len(dropped) == 1
    assert [s for s, _ in replay(tmp_path)] == [6]
    log.close()


CHILD = """
import os, sys
from mabeamd.storage.wal import WriteAheadLog
log = WriteAheadLog(sys.argv[1], sys.argv[2])
out = os.fdopen(1, "w", buffering=1)
i = 0
while True:
    i += 1
    seq = log.append(b"value-%d-" % i + os.urandom(i % 300))
    log.commit()
    out.write(f"{seq}\\n")  # acknowledged
"""


@pytest.mark.parametrize("policy", wal.POLICIES)
def test_kill9_loses_no_acknowledged_record(tmp_path: Path, policy: str) -> None:
    """kill -9 at a random moment while it writes; every sequence the writer acknowledged is
    in the log. The moment is picked after the writer has acknowledged something (waiting
    for its first lines, not for a fixed time: a loaded machine may take a second just to
    start Python)."""
    for trial in range(3):
        d = tmp_path / f"t{trial}"
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(d), policy],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = [proc.stdout.readline() for _ in range(10)]  # blocks until it writes
        assert all(line.endswith("\n") for line in first), first
        time.sleep(random.random() * 0.3)
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate()
        # Only complete lines: the kill may land mid-way through printing a number.
        acked = [int(x) for x in ("".join(first) + rest).split("\n")[:-1]]
        found = [s for s, _ in replay(d)]
        assert found[: len(acked)] == acked  # all acknowledged, in order
        assert found == list(range(1, len(found) + 1))


def test_a_put_record_is_the_effect_map() -> None:
    """A put is logged as PUT_PREFIX + its packed state (packed once for log, segment and
    reply); replay must read it as the effect {"op": "put", "var": state}."""
    import msgpack

    from mabeamd.worker.shard import PUT_PREFIX

    state = {"name": "a/b", "value": {"x": [1, 2.5, None]}, "version": 7, "owner": "o"}
    packed = msgpack.packb(state, use_bin_type=True)
    effect = {"op": "put", "var": state}
    assert PUT_PREFIX + packed == msgpack.packb(effect, use_bin_type=True)
    assert msgpack.unpackb(PUT_PREFIX + packed, raw=False) == effect


def _snapshot_like_a_shard(log: WriteAheadLog) -> int:
    """What Shard.take_snapshot does to the log: sync, rotate, drop what the snapshot covers;
    returns the snapshot's sequence number."""
    seq = log.next_seq - 1
    log.rotate()
    log.drop_before(seq + 1)
    return seq


def test_numbering_goes_on_after_a_snapshot_and_a_restart(tmp_path: Path) -> None:
    """The data loss of 2026-11: after a snapshot the log is one empty file; reopened, it
    numbered its next record 1 again, and the next start skipped that record as older than
    the snapshot."""
    log = WriteAheadLog(tmp_path, "always")
    log.append(b"a1")
    log.append(b"a2")
    snap = _snapshot_like_a_shard(log)
    log.close()
    assert snap == 2
    log = WriteAheadLog(tmp_path, "always", after=snap)  # restart
    assert log.append(b"acked") == 3
    log.commit()
    log.close()
    got: list[bytes] = []
    log = WriteAheadLog(tmp_path, "always", after=snap, apply=got.append)  # restart again
    assert got == [b"acked"] and log.replayed == 1
    assert log.append(b"next") == 4
    log.close()


def test_numbering_goes_on_after_the_snapshot_when_the_log_files_are_gone(
        tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, "always", after=41)
    assert log.append(b"x") == 42
    log.close()
    assert wal.wal_files(tmp_path)[0].name == f"wal-{42:020d}.log"


def test_two_snapshots_in_a_row_and_a_snapshot_of_an_empty_log(tmp_path: Path) -> None:
    """rotate() on a file with no record used to fail with FileExistsError (the new file has
    the same name): `mabeamctl vars snapshot` answered `internal`."""
    log = WriteAheadLog(tmp_path, "always")
    assert _snapshot_like_a_shard(log) == 0  # never written
    log.append(b"a")
    assert _snapshot_like_a_shard(log) == 1
    assert _snapshot_like_a_shard(log) == 1  # nothing since the last one
    log.close()
    assert [f.name for f in wal.wal_files(tmp_path)] == [f"wal-{2:020d}.log"]
    log = WriteAheadLog(tmp_path, "always", after=1)
    assert log.append(b"b") == 2
    log.close()


def test_a_log_renumbered_from_one_after_a_snapshot_is_repaired(tmp_path: Path) -> None:
    """A state directory written by the builds with the bug: the last file is named after the
    snapshot (wal-3) but its records are numbered 1, 2. They were all written after the
    snapshot: they are renumbered 3, 4 and replayed, not skipped."""
    path = tmp_path / f"wal-{3:020d}.log"
    recs = [wal.REC.pack(len(p), wal._crc(s, p), s) + p for s, p in ((1, b"x"), (2, b"y"))]
    path.write_bytes(wal.MAGIC + b"".join(recs) + b"\x07\x00")  # and a torn tail
    got: list[bytes] = []
    log = WriteAheadLog(tmp_path, "always", after=2, apply=got.append)
    assert got == [b"x", b"y"]
    assert log.append(b"z") == 5
    log.close()
    assert [(s, p) for s, p in replay(tmp_path)] == [(3, b"x"), (4, b"y"), (5, b"z")]


def test_a_first_record_that_contradicts_its_file_name_is_refused(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, "never", rotate_bytes=60)
    for i in range(9):
        log.append(b"payload-%d" % i)
    log.close()
    files = wal.wal_files(tmp_path)
    assert len(files) >= 3
    before = [f.read_bytes() for f in files]
    last, first = files[-1], wal._first_seq(files[-1])
    moved = last.rename(last.with_name(f"wal-{first - 1:020d}.log"))
    with pytest.raises(WalCorrupt, match=f"name says {first - 1}"):
        list(replay(tmp_path))
    moved.rename(last)
    files[1].rename(files[1].with_name(f"wal-{999:020d}.log"))  # now the last, out of place
    with pytest.raises(WalCorrupt, match=r"where \d+ was expected"):
        list(replay(tmp_path))
    # Refused, and nothing was rewritten.
    assert sorted(f.read_bytes() for f in wal.wal_files(tmp_path)) == sorted(before)
