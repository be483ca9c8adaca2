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

from mabeamd import wal
from mabeamd.wal import WalCorrupt, WriteAheadLog, replay


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
from mabeamd.wal import WriteAheadLog
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
    """kill -9 at a random moment; every sequence the writer acknowledged is in the log."""
    for trial in range(3):
        d = tmp_path / f"t{trial}"
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(d), policy],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(0.2 + random.random() * 0.3)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        # Only complete lines: the kill may land mid-way through printing a number.
        acked = [int(x) for x in out.split("\n")[:-1]]
        assert acked, "the writer acknowledged nothing"
        found = [s for s, _ in replay(d)]
        assert found[: len(acked)] == acked  # all acknowledged, in order
        assert found == list(range(1, len(found) + 1))


def test_a_put_record_is_the_effect_map() -> None:
    """A put is logged as PUT_PREFIX + its packed state (packed once for log, segment and
    reply); replay must read it as the effect {"op": "put", "var": state}."""
    import msgpack

    from mabeamd.shard import PUT_PREFIX

    state = {"name": "a/b", "value": {"x": [1, 2.5, None]}, "version": 7, "owner": "o"}
    packed = msgpack.packb(state, use_bin_type=True)
    effect = {"op": "put", "var": state}
    assert PUT_PREFIX + packed == msgpack.packb(effect, use_bin_type=True)
    assert msgpack.unpackb(PUT_PREFIX + packed, raw=False) == effect
