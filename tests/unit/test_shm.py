"""Shard segments: single writer, lock-free readers, no torn read ever."""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mabeamd.storage import shm
from mabeamd.storage.shm import SegmentReader, SegmentWriter, Unavailable

pytestmark = pytest.mark.skipif(not shm.supported(), reason="seqlock reads need x86-64")


@pytest.fixture
def shmdir() -> Iterator[Path]:
    d = Path("/dev/shm") / f"mbtest-{os.getpid()}-{time.monotonic_ns()}"
    d.mkdir()
    yield d
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


def test_put_get_overwrite_delete(shmdir: Path) -> None:
    w = SegmentWriter(shmdir, "t", 0, slots=16, data_size=4096)
    r = SegmentReader(shmdir, "t", 0)
    assert r.get("missing") is None
    w.put("a", 1, {"x": [1, 2]}, {"type": "map"})
    w.put("ü/名前", 1, "unicode ok", {})
    assert r.get("a") == {"name": "a", "value": {"x": [1, 2]}, "version": 1, "type": "map"}
    w.put("a", 2, b"bytes", {})
    assert r.get("a") == {"name": "a", "value": b"bytes", "version": 2}
    assert w.payload("a") == msgpack.packb({"name": "a", "value": b"bytes", "version": 2})
    assert r.get("ü/名前")["value"] == "unicode ok"  # type: ignore[index]
    w.delete("a", 3)
    assert r.get("a") is None and w.payload("a") is None
    w.put("a", 4, 42, {})  # back again, same slot
    assert r.get("a")["version"] == 4  # type: ignore[index]
    assert w.stats()["live"] == 2
    w.close(unlink=True)
    r.close()


@pytest.mark.parametrize("prefault", [False, True])
def test_growth_and_compaction_switch_readers(shmdir: Path, prefault: bool) -> None:
    w = SegmentWriter(shmdir, "t", 0, slots=16, data_size=4096)
    r = SegmentReader(shmdir, "t", 0, prefault=prefault)
    first_gen = r.generation
    for i in range(2000):  # forces table growth and data compaction many times
        w.put(f"k{i % 300}", i, "v" * (i % 97), {})
    assert w.generation > first_gen
    for k in range(300):
        last = max(i for i in range(2000) if i % 300 == k)
        rec = r.get(f"k{k}")
        assert rec is not None and rec["version"] == last and rec["value"] == "v" * (last % 97)
    assert r.generation == w.generation
    # Only the current generation's file is left.
    files = sorted(p.name for p in shmdir.iterdir())
    assert files == [f"t-s0-g{w.generation}", "t-s0.ctl"]
    w.close(unlink=True)
    r.close()


def test_new_writer_retires_the_old_generation(shmdir: Path) -> None:
    """A restarted worker builds a fresh generation from its state; readers follow."""
    w1 = SegmentWriter(shmdir, "t", 0)
    w1.put("a", 1, "old", {})
    r = SegmentReader(shmdir, "t", 0)
    assert r.get("a")["value"] == "old"  # type: ignore[index]
    w1.close()  # the worker died; its file stays, readers keep reading it
    assert r.get("a")["value"] == "old"  # type: ignore[index]
    w2 = SegmentWriter(shmdir, "t", 0, records=[{"name": "a", "version": 2, "value": "new"}])
    assert r.get("a")["value"] == "new"  # type: ignore[index]
    assert sorted(p.name for p in shmdir.iterdir()) == [f"t-s0-g{w2.generation}", "t-s0.ctl"]
    w2.close(unlink=True)
    r.close()


def test_any_slot_count_asked_for_works(shmdir: Path) -> None:
    """A restarted shard asks for 2 x its variables' slots (1026 here): the table must still
    be a power of two, or probing reaches a few slots only and never ends."""
    records = [{"name": f"v{i}", "version": 1, "value": i} for i in range(600)]
    w = SegmentWriter(shmdir, "t", 0, slots=1026, records=records)
    r = SegmentReader(shmdir, "t", 0)
    assert w.slot_count & (w.slot_count - 1) == 0 and w.slot_count >= 1026
    for i in range(600):
        got = r.get(f"v{i}")
        assert got is not None and got["value"] == i
    w.put("v600", 1, 600, {})
    assert r.get("v600") is not None
    r.close()
    w.close(unlink=True)


def test_a_slot_left_locked_is_reported_not_spun_on_forever(shmdir: Path) -> None:
    w = SegmentWriter(shmdir, "t", 0, slots=16)
    w.put("a", 1, 1, {})
    r = SegmentReader(shmdir, "t", 0)
    slot = w._index["a"]
    pos = shm.HEADER_SIZE + slot * shm.SLOT.size
    seq = struct.unpack_from("<Q", w._mm, pos)[0]  # type: ignore[arg-type]
    struct.pack_into("<Q", w._mm, pos, seq + 1)  # type: ignore[arg-type]  # "crashed" mid-write
    with pytest.raises(Unavailable):
        r.get("a")
    w.close(unlink=True)
    r.close()


names = st.sampled_from([f"n{i}" for i in range(12)])
values = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=50), st.binary(max_size=300),
                   st.lists(st.integers(0, 9), max_size=5))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "delete", "compact"]), names, values),
                max_size=80))
def test_matches_a_dict_model(ops: list[tuple[str, str, Any]]) -> None:
    d = Path("/dev/shm") / f"mbprop-{os.getpid()}-{time.monotonic_ns()}"
    d.mkdir()
    try:
        w = SegmentWriter(d, "p", 0, slots=16, data_size=1024)
        r = SegmentReader(d, "p", 0)
        model: dict[str, tuple[int, Any]] = {}
        for version, (op, name, value) in enumerate(ops, start=1):
            if op == "put":
                w.put(name, version, value, {})
                model[name] = (version, value)
            elif op == "delete":
                w.delete(name, version)
                model.pop(name, None)
            else:
                w.compact()
            for n in [f"n{i}" for i in range(12)]:
                rec = r.get(n)
                got = None if rec is None else (rec["version"], rec["value"])
                assert got == model.get(n)
        w.close(unlink=True)
        r.close()
    finally:
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


# --- the torn-read test: a writer hammering, readers in other processes --------------------

NAMES = [f"hot/{i}" for i in range(8)]


def _value(i: int) -> dict[str, Any]:
    blob = os.urandom(16 + (i * 37) % 900)  # sizes vary: records move, compactions happen
    return {"i": i, "blob": blob, "crc": zlib.crc32(blob)}


def _writer(directory: str, stop: Any, ready: Any, counter: Any) -> None:
    w = SegmentWriter(Path(directory), "h", 0, slots=16, data_size=1 << 16)
    for n in NAMES:
        w.put(n, 0, _value(0), {})
    ready.set()
    i = 0
    while not stop.is_set():
        i += 1
        w.put(NAMES[i % len(NAMES)], i, _value(i), {"by": "writer"})
    counter.value = i
    w.close()


def _reader(directory: str, reads: int, out: Any) -> None:
    try:
        _read_and_check(directory, reads, out)
    except BaseException as exc:  # report, so the test fails instead of waiting
        out.put(repr(exc))
        raise


def _read_and_check(directory: str, reads: int, out: Any) -> None:
    r = SegmentReader(Path(directory), "h", 0)
    torn = 0
    last: dict[str, int] = {}
    backwards = 0
    for k in range(reads):
        name = NAMES[k % len(NAMES)]
        rec = r.get(name)
        assert rec is not None, f"read {k}: {name} absent in generation {r.generation}"
        v = rec["value"]
        if rec["name"] != name or zlib.crc32(v["blob"]) != v["crc"] or v["i"] != rec["version"]:
            torn += 1
        if rec["version"] < last.get(name, -1):
            backwards += 1
        last[name] = rec["version"]
    out.put((torn, backwards, r.retries, r.generation))
    r.close()


@pytest.mark.slow
def test_no_torn_reads_under_a_hammering_writer(shmdir: Path) -> None:
    ctx = mp.get_context("spawn")
    stop, ready, counter = ctx.Event(), ctx.Event(), ctx.Value("q", 0)
    out: Any = ctx.Queue()
    writer = ctx.Process(target=_writer, args=(str(shmdir), stop, ready, counter))
    writer.start()
    assert ready.wait(10)
    per_reader = 500_000
    readers = [ctx.Process(target=_reader, args=(str(shmdir), per_reader, out))
               for _ in range(2)]
    for p in readers:
        p.start()
    results = [out.get(timeout=100) for _ in readers]
    stop.set()
    assert all(isinstance(r, tuple) for r in results), results
    writer.join(10)
    for p in readers:
        p.join(10)
    torn = sum(r[0] for r in results)
    backwards = sum(r[1] for r in results)
    writes = counter.value
    print(f"{len(readers) * per_reader:,} reads, {writes:,} writes, "
          f"retries {[r[2] for r in results]}, generations up to {max(r[3] for r in results)}")
    assert writes > 10_000, "the writer did not hammer"
    assert max(r[3] for r in results) > 1, "no compaction happened during the reads"
    assert torn == 0
    assert backwards == 0  # a reader never sees a version go back
