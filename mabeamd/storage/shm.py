"""Shard segments: one writer, lock-free readers in any process, over files in /dev/shm.

A segment file (`PREFIX-sSHARD-gGEN`) holds a header, a hash table of fixed 32-byte slots and
a data area of value records:

    header  (4096 B)  magic, generation, next_generation, slot_count, data_offset,
                      data_size, data_used, live, hash key
    slots   (32 B each) seq u64 | name hash u64 | record offset u64 | length u32 | flags u32
    records           length u32 | crc32 u32 | msgpack map: the variable as `var.get`
                      answers it (name, value, version and the metadata), or for a
                      deleted one {name, version, deleted: true}

A record is the very bytes a `var.get` reply carries as its body: readers decode it once
into the answer, and the worker sends it without packing it again.

Why it cannot tear:
- Records are immutable. The writer appends each new version at the end of the data area
  (bump allocation) and never writes over a record while the segment is current.
- A slot is the only thing that changes in place, under a seqlock: the writer makes `seq` odd,
  writes the other fields, makes `seq` even. A reader reads seq, the slot, seq again, and
  retries if they differ or are odd. With x86-64's ordered stores and loads (TSO) this is
  sound from Python; other architectures must not use the shared-memory path (`supported()`).
- Every seq word (and the generation words) is read and written as one 8-byte element of a
  `memoryview.cast("Q")`: a single aligned load or store. Never with `struct.pack_into`: it
  zero-fills its target before writing, so a seq written that way passes through 0, an even
  value, and a reader can take "0, half-written slot, 0" for a consistent empty slot. (The
  torn-read test found exactly that.)
- The record a consistent slot points to is complete (it was written before the slot), and
  its CRC is checked anyway.

Space is reclaimed, and the table grows, by compaction: the writer builds generation GEN+1 in
a new file with only the live records, points the shard's control file (`PREFIX-sSHARD.ctl`)
at it, sets `next_generation` in the old header and unlinks the old file. Readers notice
`next_generation` on their next read and switch; a mapping of an unlinked file stays valid, so
a reader mid-read still sees consistent (older) data.

Slot placement uses keyed BLAKE2b (the key is in the header), so names chosen by clients
cannot be crafted to collide into long probe chains.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import platform
import secrets
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack

from mabeamd.net import wire

MAGIC = b"MBSHM002"  # 002: records are the public map (001: [name, version, value, meta])
HEADER = struct.Struct("<8sQQQQQQQ16s")
HEADER_SIZE = 4096
NEXT_GEN_OFFSET = 16  # header field next_generation: what readers poll
PROGRESS_EVERY = 8191  # records between progress() calls while building (a mask)
SLOT = struct.Struct("<QQQII")  # seq, hash, offset, length, flags
SLOT_FIELDS = struct.Struct("<QQII")  # the slot without its seq
U64 = struct.Struct("<Q")
REC = struct.Struct("<II")  # payload length, crc32
LIVE, DELETED = 1, 2
MAX_LOAD = 0.7
# A writer can be preempted between making a seq odd and even again (a whole scheduler slice
# on a busy machine): spin briefly, then yield the CPU to it, and only after this long call
# the slot stuck (the writer died mid-write).
SPIN = 200
LOCKED_TIMEOUT = 1.0
# Segments and control files: the owner writes, its group reads. Set with fchmod after the
# open, so the process's umask (0077 under the systemd unit) does not decide who can read.
SEGMENT_MODE = 0o640


class SegmentError(Exception):
    pass


class Unavailable(SegmentError):
    """The shared-memory path cannot answer now (writer mid-crash, file gone): use the wire."""


def supported() -> bool:
    """Seqlock reads from Python are only sound with x86-64's ordered loads and stores."""
    return platform.machine().lower() in ("x86_64", "amd64")


def segment_path(directory: Path, prefix: str, shard: int, generation: int) -> Path:
    return directory / f"{prefix}-s{shard}-g{generation}"


def control_path(directory: Path, prefix: str, shard: int) -> Path:
    return directory / f"{prefix}-s{shard}.ctl"


def _hash(key: bytes, name: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(name, digest_size=8, key=key).digest(), "little") or 1


def _pack(obj: Any) -> bytes:
    return wire.pack(obj)


def _unmap(q: memoryview | None, mm: mmap.mmap | None) -> None:
    """Release the word view before the mapping: an exported buffer blocks mmap.close()."""
    if q is not None:
        q.release()
    if mm is not None:
        mm.close()


_ZEROS = bytes(8)


def _align(n: int) -> int:
    return (n + 7) & ~7


class SegmentWriter:
    """The single writer of one shard's segment (the shard's worker)."""

    def __init__(self, directory: Path, prefix: str, shard: int, *, slots: int = 1024,
                 data_size: int = 1 << 20, records: Iterable[dict[str, Any]] = (),
                 progress: Callable[[], None] = lambda: None, group: int | None = None,
                 ) -> None:
        """Create a new generation (retiring any current one) holding `records` (public
        maps of variables, each with its "name"). `group`: the gid whose members may read
        the segments (None: the writer's own group)."""
        self.directory, self.prefix, self.shard = Path(directory), prefix, shard
        self.group = group
        self._key = secrets.token_bytes(16)
        self._ctl_fd = os.open(control_path(self.directory, prefix, shard),
                               os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, SEGMENT_MODE)
        # Also when the file is already there: the group may differ from the last run's.
        self._own(self._ctl_fd)
        if os.fstat(self._ctl_fd).st_size < 8:
            os.posix_fallocate(self._ctl_fd, 0, 8)
        self._ctl = mmap.mmap(self._ctl_fd, 8)
        self._ctl_q = memoryview(self._ctl).cast("Q")
        self.generation = self._ctl_q[0]
        self._mm: mmap.mmap | None = None
        self._q: memoryview | None = None
        self._path: Path | None = None
        # Called every few thousand records while a generation is built: a big shard takes
        # seconds to copy, and its worker must keep telling the arbiter it is alive.
        self.progress: Callable[[], None] = progress
        initial = []
        for k, r in enumerate(records):
            payload = _pack(r)
            initial.append((REC.pack(len(payload), zlib.crc32(payload)) + payload, r["name"], 0))
            if not k & PROGRESS_EVERY and k:
                progress()
        self._build(initial, slots, data_size)

    # --- layout ----------------------------------------------------------------------------

    def _build(self, live: list[tuple[bytes, str, int]], slots: int, data_size: int) -> None:
        """Write generation+1 with these live records and switch to it: (record = REC header
        and payload, name, slot hash under this writer's key or 0 if not known yet)."""
        # A power of two: probing masks the hash with slot_count - 1 (any other count leaves
        # most slots unreachable and the probe loop never ends).
        slots = 1 << max(4, (slots - 1).bit_length())
        while slots * MAX_LOAD < len(live) + 1:
            slots *= 2
        need = sum(_align(len(rec)) for rec, _, _ in live)
        while data_size < need * 2:
            data_size *= 2
        gen = self.generation + 1
        path = segment_path(self.directory, self.prefix, self.shard, gen)
        size = HEADER_SIZE + slots * SLOT.size + data_size
        # A file already there was left by a writer killed while building it: never
        # published (the control word still names an older generation), so no reader has it.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, SEGMENT_MODE)
        try:
            self._own(fd)
            # Reserve the pages now: on a full tmpfs this fails cleanly (ENOSPC) instead of
            # a later write into the mapping killing us with SIGBUS.
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            path.unlink()
            raise
        os.close(fd)
        old_mm, old_q, old_path = self._mm, self._q, self._path
        self._mm, self._q, self._path, self.generation = mm, memoryview(mm).cast("Q"), path, gen
        self.slot_count, self.data_size = slots, data_size
        self.data_offset = HEADER_SIZE + slots * SLOT.size
        self._index: dict[str, int] = {}
        self.garbage = 0
        self._fill(live)  # sets data_used and live
        self._write_header()
        self._ctl_q[0] = gen  # new readers start here
        if old_q is not None:
            old_q[NEXT_GEN_OFFSET >> 3] = gen  # current readers move on
        _unmap(old_q, old_mm)
        if old_path is not None:
            with contextlib.suppress(FileNotFoundError):
                old_path.unlink()
        else:  # a predecessor (e.g. a crashed worker's generation) is retired too
            self._retire_older(gen)

    def _own(self, fd: int) -> None:
        """The group first, then the mode: fchown by a non-root owner may clear mode bits."""
        if self.group is not None:
            os.fchown(fd, -1, self.group)
        os.fchmod(fd, SEGMENT_MODE)

    def _fill(self, live: list[tuple[bytes, str, int]]) -> None:
        """Write a fresh generation's records in bulk. Nobody maps the file before _build
        publishes it, so slots skip the seqlock dance (seq 0 is even: stable) and the data
        region is one copy; a compaction also reuses each record's header (its CRC) and
        slot hash. This is how long a big shard's worker stalls when its segment grows.
        Names are unique: both callers take them from a dict (the store, the old index)."""
        mm = self._mm
        assert mm is not None
        mask = self.slot_count - 1
        taken = bytearray(self.slot_count)
        index = self._index
        chunks: list[bytes] = []
        off = self.data_offset
        for k, (rec, name, known) in enumerate(live):
            n = len(rec) - REC.size
            size = _align(len(rec))
            chunks.append(rec)
            if size != len(rec):
                chunks.append(_ZEROS[: size - len(rec)])
            h = known or _hash(self._key, name.encode())
            i = h & mask
            while taken[i]:
                i = (i + 1) & mask
            taken[i] = 1
            index[name] = i
            SLOT.pack_into(mm, HEADER_SIZE + i * SLOT.size, 0, h, off, n, LIVE)
            off += size
            if not k & PROGRESS_EVERY and k:
                self.progress()
        blob = b"".join(chunks)
        mm[self.data_offset: self.data_offset + len(blob)] = blob
        self.data_used = len(blob)
        self.live = len(live)
        self.live_bytes = sum(len(rec) - REC.size for rec, _, _ in live)  # payload bytes

    def _retire_older(self, gen: int) -> None:
        for g in range(max(1, gen - 64), gen):
            old = segment_path(self.directory, self.prefix, self.shard, g)
            if not old.exists():
                continue
            with contextlib.suppress(OSError):
                fd = os.open(old, os.O_RDWR | os.O_CLOEXEC)
                try:
                    mm = mmap.mmap(fd, HEADER_SIZE)
                    q = memoryview(mm).cast("Q")
                    q[NEXT_GEN_OFFSET >> 3] = gen
                    q.release()
                    mm.close()
                finally:
                    os.close(fd)
                old.unlink()

    def _write_header(self) -> None:
        assert self._mm is not None
        HEADER.pack_into(self._mm, 0, MAGIC, self.generation, 0, self.slot_count,
                         self.data_offset, self.data_size, self.data_used, self.live, self._key)

    # --- writing ---------------------------------------------------------------------------

    def _append(self, name: str, payload: bytes, flags: int) -> None:
        mm = self._mm
        assert mm is not None
        off = self.data_offset + self.data_used
        REC.pack_into(mm, off, len(payload), zlib.crc32(payload))
        mm[off + REC.size: off + REC.size + len(payload)] = payload
        self.data_used += _align(REC.size + len(payload))
        h = _hash(self._key, name.encode())
        slot = self._index.get(name)
        if slot is None:
            slot = self._free_slot(h)
            self._index[name] = slot
        else:
            self.garbage += 1
        was, was_length = self._publish(slot, h, off, len(payload), flags)
        if was == LIVE:
            self.live_bytes -= was_length
        if flags == LIVE:
            self.live_bytes += len(payload)
        if was != LIVE and flags == LIVE:
            self.live += 1
        elif was == LIVE and flags != LIVE:
            self.live -= 1

    def record_length(self, name: str) -> int:
        """The length of `name`'s live record, 0 if it has none (for quotas)."""
        slot = self._index.get(name)
        if slot is None or self._mm is None:
            return 0
        _, _, _, length, flags = SLOT.unpack_from(self._mm, HEADER_SIZE + slot * SLOT.size)
        return int(length) if flags == LIVE else 0

    def _free_slot(self, h: int) -> int:
        """The first empty slot probing from the name's hash h."""
        assert self._mm is not None
        mask = self.slot_count - 1
        i = h & mask
        while U64.unpack_from(self._mm, HEADER_SIZE + i * SLOT.size + 8)[0]:  # name hash
            i = (i + 1) & mask
        return i

    def _publish(self, slot: int, h: int, off: int, length: int, flags: int,
                 ) -> tuple[int, int]:
        """Seqlock write of one slot; returns its previous flags and record length."""
        mm, q = self._mm, self._q
        assert mm is not None and q is not None
        pos = HEADER_SIZE + slot * SLOT.size
        seq, _, _, was_length, was = SLOT.unpack_from(mm, pos)
        q[pos >> 3] = seq + 1  # odd: readers retry (one 8-byte store, see above)
        SLOT_FIELDS.pack_into(mm, pos + 8, h, off, length, flags)
        q[pos >> 3] = seq + 2
        return int(was), int(was_length)

    def _room(self, name: str, payload: bytes) -> None:
        """Compact (and grow) first if this write would not fit."""
        need = _align(REC.size + len(payload))
        new_slot = name not in self._index
        full_table = new_slot and len(self._index) + 1 > self.slot_count * MAX_LOAD
        if self.data_used + need <= self.data_size and not full_table:
            return
        self.compact(extra=need)

    def put_packed(self, name: str, payload: bytes) -> None:
        """Publish a variable: `payload` is its public map, packed (with this `name`)."""
        self._room(name, payload)
        self._append(name, payload, LIVE)
        self._sync_header()

    def put(self, name: str, version: int, value: Any, meta: dict[str, Any]) -> None:
        self.put_packed(name, _pack({"name": name, "value": value, "version": version,
                                     **meta}))

    def payload(self, name: str) -> bytes | None:
        """The current record's bytes (the writer's own copy: no seqlock needed)."""
        slot = self._index.get(name)
        mm = self._mm
        if slot is None or mm is None:
            return None
        _, _, off, length, flags = SLOT.unpack_from(mm, HEADER_SIZE + slot * SLOT.size)
        if flags != LIVE:
            return None
        return mm[off + REC.size: off + REC.size + length]

    def delete(self, name: str, version: int) -> None:
        if name not in self._index:
            return
        payload = _pack({"name": name, "version": version, "deleted": True})
        self._room(name, payload)
        self._append(name, payload, DELETED)
        self._sync_header()

    def _sync_header(self) -> None:
        assert self._q is not None
        self._q[48 >> 3] = self.data_used
        self._q[56 >> 3] = self.live

    def compact(self, extra: int = 0) -> None:
        """Copy live records into a new generation sized for them (plus `extra` bytes)."""
        mm = self._mm
        assert mm is not None
        entries = []
        for name, slot in self._index.items():
            _, h, off, length, flags = SLOT.unpack_from(mm, HEADER_SIZE + slot * SLOT.size)
            if flags == LIVE:  # same writer, same key: the record and its hash carry over
                entries.append((mm[off: off + REC.size + length], name, h))
        live_bytes = sum(_align(len(rec)) for rec, _, _ in entries) + extra
        # At least as much room again as the live data before the next compaction: each
        # compaction copies the live data once per that much written (amortised O(1) per
        # byte), and the segment stays within 2-4x its live data (fallocate reserves it all).
        data = 1 << 20
        while data < live_bytes * 2:
            data *= 2
        slots = 16
        while slots * MAX_LOAD < len(entries) + 2:
            slots *= 2
        self._build(entries, max(slots, 16), data)

    def stats(self) -> dict[str, int]:
        return {"generation": self.generation, "slots": self.slot_count,
                "data_size": self.data_size, "data_used": self.data_used, "live": self.live,
                "live_bytes": self.live_bytes, "overwritten": self.garbage}

    def close(self, unlink: bool = False) -> None:
        _unmap(self._q, self._mm)
        self._q = self._mm = None
        if unlink:
            for p in (self._path, control_path(self.directory, self.prefix, self.shard)):
                if p is not None:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
        self._ctl_q.release()
        self._ctl.close()
        os.close(self._ctl_fd)


class SegmentReader:
    """Reads one shard's segment from any process; never blocks the writer."""

    def __init__(self, directory: Path, prefix: str, shard: int, *,
                 prefault: bool = False) -> None:
        """prefault: map each generation with MAP_POPULATE. Its first read then pays for
        faulting the whole segment in, and no read after it takes a page fault: worth it for
        a long-lived reader of a big shard (both figures: docs/benchmarks.md, the scale
        row)."""
        self.directory, self.prefix, self.shard = Path(directory), prefix, shard
        self._flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if prefault else 0)
        self._mm: mmap.mmap | None = None
        self._q: memoryview | None = None
        self.generation = 0
        self.retries = 0
        self._open()

    def _open(self) -> None:
        # Each miss means the writer retired the generation we were about to open: it is
        # making progress, so keep following it (a miss costs microseconds).
        for _ in range(10_000):
            try:
                with open(control_path(self.directory, self.prefix, self.shard), "rb") as f:
                    gen = U64.unpack(f.read(8))[0]
            except FileNotFoundError:
                # The control file lives as long as the daemon: none means no segments on
                # this host (a remote client, a stopped daemon), and no point in retrying.
                raise Unavailable(f"shard {self.shard}: no control file "
                                  f"{control_path(self.directory, self.prefix, self.shard)}"
                                  ) from None
            except struct.error:
                continue  # created a moment ago, not yet sized: again
            try:
                fd = os.open(segment_path(self.directory, self.prefix, self.shard, gen),
                             os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, struct.error):
                continue  # retired between reading the control file and opening: again
            try:
                mm = mmap.mmap(fd, 0, flags=self._flags, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            magic, g, _, slots, _, data_size, _, _, key = HEADER.unpack_from(mm, 0)
            if magic != MAGIC:
                mm.close()
                raise SegmentError(f"not a mabeamd segment (magic {magic!r})")
            self.close()
            self._mm, self._q, self.generation, self._key = \
                mm, memoryview(mm).cast("Q"), g, key
            self._mask, self._limit = slots - 1, HEADER_SIZE + slots * SLOT.size + data_size
            self._slots = slots
            return
        raise Unavailable(f"shard {self.shard}: no current segment")

    def get(self, name: str) -> dict[str, Any] | None:
        """The variable `name` as `var.get` answers it (a new dict each call), None if
        absent or deleted. Raises Unavailable."""
        for _ in range(1000):
            mm, q = self._mm, self._q
            assert mm is not None and q is not None
            if q[NEXT_GEN_OFFSET >> 3]:
                self._open()
                continue
            found = self._lookup(mm, q, name)
            if found is not False:
                return found  # type: ignore[return-value]
            self.retries += 1
        raise Unavailable(f"shard {self.shard}: no consistent read of {name!r}")

    def _lookup(self, mm: mmap.mmap, q: memoryview, name: str,
                ) -> dict[str, Any] | bool | None:
        """The record's map, None (absent), or False (inconsistent: retry)."""
        encoded = name.encode()
        h = _hash(self._key, encoded)
        i = h & self._mask
        for _ in range(self._slots):
            pos = HEADER_SIZE + i * SLOT.size
            word = pos >> 3
            spins = 0
            deadline = 0.0
            while True:
                s1 = q[word]
                if not s1 & 1:
                    _, kh, off, length, flags = SLOT.unpack_from(mm, pos)
                    if q[word] == s1:
                        break
                spins += 1
                if spins > SPIN:
                    now = time.monotonic()
                    if not deadline:
                        deadline = now + LOCKED_TIMEOUT
                    elif now > deadline:
                        raise Unavailable(f"shard {self.shard}: slot {i} stays locked (writer "
                                          "died mid-write?)")
                    os.sched_yield()
            if kh == 0:
                return None
            if kh == h:
                end = off + REC.size + length
                if end > self._limit:
                    return False
                plen, crc = REC.unpack_from(mm, off)
                payload = mm[off + REC.size: end]
                if plen != length or zlib.crc32(payload) != crc:
                    return False
                rec = msgpack.unpackb(payload, raw=False)
                if rec["name"] == name:
                    return None if flags == DELETED else rec
            i = (i + 1) & self._mask
        return None

    def close(self) -> None:
        _unmap(self._q, self._mm)
        self._q = self._mm = None
