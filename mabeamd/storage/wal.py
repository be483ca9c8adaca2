"""The write-ahead log of one shard: every acknowledged write is here first.

Files `wal-<first seq, 20 digits>.log` in the shard's state directory, each starting with an
8-byte magic and holding records

    length u32 | crc32 u32 (of seq + payload) | seq u64 | payload (length bytes)

with sequence numbers contiguous across files. `append()` puts a record in the file with one
write(2) per record (so a crash of the process never loses it: it is in the page cache);
`commit()` makes what was appended durable according to the fsync policy before the caller
acknowledges anything:

    always    fsync before every acknowledgement (group commit: one fsync covers every
              record appended since the last one)
    everysec  fsync about once a second (`tick()`), like Redis' appendfsync everysec: a
              power loss may lose about the last second. The fsync runs in a background
              thread, as Redis' does: under a steady write load it takes milliseconds
              (docs/benchmarks.md), and inline it would stall every request of the shard
              once a second. A failed background
              fsync makes every later append fail: nothing more is acknowledged on a log
              that may not be durable.
    never     leave it to the kernel

Replay reads every file in order. A record cut short or failing its CRC at the end of the
last file is a torn tail (the write the crash interrupted, never acknowledged): it is
discarded and the file truncated there. Anything wrong before that point is corruption:
WalCorrupt, and the daemon refuses to start rather than drop acknowledged writes silently.

Sequence numbers never go back, and a file's name is the sequence number of its first
record. An empty file still says where numbering goes on: after a snapshot the log rotates
to an empty `wal-<snapshot seq + 1>.log`, and a log opened on it must number its next
record from there, not from 1 (builds before 2026-12-01 did, and replay then skipped
those records as older than the snapshot: acknowledged writes lost on the next start). Such a
file -- the last one, its first record numbered below its name, numbered contiguously
from there -- is renumbered in place at open, with a warning; every record in it was
written after the snapshot that named it, so nothing is skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import struct
import threading
import time
import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"MBWAL001"
REC = struct.Struct("<IIQ")
POLICIES = ("always", "everysec", "never")
MAX_RECORD = 1 << 30
# Bounds in seconds of the append (write(2)) and fsync latency histograms: a page-cache
# write takes microseconds, an fsync from a millisecond (SSD) to a second (a busy disk).
LATENCY_BUCKETS: tuple[float, ...] = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4,
                                      5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1,
                                      0.25, 0.5, 1.0)


class WalCorrupt(Exception):
    pass


def _crc(seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<Q", seq)))


def wal_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def _first_seq(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def replay(directory: Path, after: int = 0, repair: bool = True,
           ) -> Iterator[tuple[int, bytes]]:
    """Yield (seq, payload) for every record with seq > after, truncating a torn tail and
    renumbering a last file numbered from 1 (see the module docstring). With repair=False
    nothing is written: the same records come out, the files stay as they are."""
    files = wal_files(directory)
    expected: int | None = None
    for n, path in enumerate(files):
        last = n == len(files) - 1
        with open(path, "r+b" if repair else "rb") as f:
            data = f.read()
            if data[:8] != MAGIC:
                if last and len(data) < 8:  # created, crashed before the magic was written
                    if repair:
                        f.truncate(0)
                        f.write(MAGIC)
                    continue
                raise WalCorrupt(f"{path}: not a mabeamd WAL file")
            named = _first_seq(path)
            head = next(_records(data), None)  # the first record, if it is intact
            if head is not None:
                first = head[1]
                if first < named and last and expected in (None, named):
                    data = _renumbered(path, data, named - first)
                    if repair:
                        _replace(path, data)
                elif first != named:
                    raise WalCorrupt(f"{path}: its first record is sequence {first}, but the "
                                     f"file's name says {named}")
                if expected is not None and named != expected:
                    raise WalCorrupt(f"{path}: starts at sequence {named} where {expected} "
                                     "was expected (a file is missing or out of place)")
                expected = named
            pos = 8
            while pos < len(data):
                bad = None
                if pos + REC.size > len(data):
                    bad = "record header cut short"
                else:
                    length, crc, seq = REC.unpack_from(data, pos)
                    end = pos + REC.size + length
                    if length > MAX_RECORD or end > len(data):
                        bad = "record cut short"
                    elif _crc(seq, data[pos + REC.size:end]) != crc:
                        bad = "checksum mismatch"
                    elif expected is not None and seq != expected:
                        raise WalCorrupt(f"{path}: sequence {seq} where {expected} was expected")
                if bad is not None:
                    if not last:
                        raise WalCorrupt(f"{path} at byte {pos}: {bad}, and later files exist")
                    if repair:
                        log.warning("%s: torn tail at byte %d (%s): %d bytes of an "
                                    "unacknowledged write discarded", path, pos, bad,
                                    len(data) - pos)
                        f.truncate(pos)
                    break
                if seq > after:
                    yield seq, data[pos + REC.size:end]
                expected = seq + 1
                pos = end


def _records(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(position, seq, payload) of each whole, intact record of a file's bytes, stopping at
    the first one cut short or failing its checksum."""
    pos = 8
    while pos + REC.size <= len(data):
        length, crc, seq = REC.unpack_from(data, pos)
        end = pos + REC.size + length
        payload = data[pos + REC.size:end]
        if length > MAX_RECORD or end > len(data) or _crc(seq, payload) != crc:
            return
        yield pos, seq, payload
        pos = end


def _renumbered(path: Path, data: bytes, shift: int) -> bytes:
    """The last file's bytes with its records numbered `shift` higher (the numbering from 1
    after a snapshot, see the module docstring). Refuses (WalCorrupt) unless the records are
    contiguous."""
    out = [MAGIC]
    prev: int | None = None
    for _, seq, payload in _records(data):
        if prev is not None and seq != prev + 1:
            raise WalCorrupt(f"{path}: sequence {seq} after {prev}, in a file whose numbering "
                             "must be repaired; see docs/operations.md, 'A shard whose WAL is "
                             "refused'")
        prev = seq
        out.append(REC.pack(len(payload), _crc(seq + shift, payload), seq + shift) + payload)
    first = (prev or 0) - len(out) + 2
    log.warning("%s: %d records numbered from %d are numbered from %d (written after a "
                "snapshot by a build that numbered them from 1 again; replay would have "
                "skipped them)", path, len(out) - 1, first, first + shift)
    return b"".join(out)  # intact records only: a torn tail is gone with the old file


def _replace(path: Path, data: bytes) -> None:
    """Atomically: a new file is fsynced, then renamed over the old one."""
    tmp = path.with_name(f".{path.name}.new")
    with open(tmp, "wb") as t:
        t.write(data)
        t.flush()
        os.fsync(t.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class WriteAheadLog:
    def __init__(self, directory: Path, policy: str = "everysec",
                 rotate_bytes: int = 64 << 20, *, after: int = 0,
                 apply: Callable[[bytes], None] | None = None) -> None:
        """Open the log for appending, after reading it once: `apply` gets the payload of
        every record past `after` (the snapshot's sequence number), in order. The next
        record is numbered after the last one, the last file's name and `after`, whichever
        is highest."""
        if policy not in POLICIES:
            raise ValueError(f"fsync policy must be one of {POLICIES}, got {policy!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.policy = policy
        self.rotate_bytes = rotate_bytes
        # everysec: the background fsync. The lock keeps the fd it syncs open (rotation and
        # close take it); the event is set while a sync is asked for or running.
        self._lock = threading.Lock()
        self._syncer: threading.Thread | None = None
        self._sync_asked = threading.Event()
        self._stopping = threading.Event()
        self.failed: OSError | None = None
        self.next_seq = after + 1
        self.replayed = 0
        for seq, payload in replay(self.directory):  # also repairs a torn tail
            self.next_seq = seq + 1
            if seq > after and apply is not None:
                apply(payload)
                self.replayed += 1
        files = wal_files(self.directory)
        if files:
            self.next_seq = max(self.next_seq, _first_seq(files[-1]), after + 1)
        self._fd = -1
        self._size = 0
        if files:
            self._open_existing(files[-1])
        else:
            self._start_file()
        self._unsynced = False
        self._last_sync = time.monotonic()
        self.fsyncs = 0
        self.fsync_seconds = 0.0
        # Latency histograms for metrics (counts per LATENCY_BUCKETS bound, the last +Inf):
        # plain lists, so a worker ships them in its heartbeat as they are.
        self.append_hist = [0] * (len(LATENCY_BUCKETS) + 1)
        self.fsync_hist = [0] * (len(LATENCY_BUCKETS) + 1)
        self.append_seconds = 0.0

    def _open_existing(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._size = os.fstat(self._fd).st_size
        self._path = path

    def _start_file(self) -> None:
        path = self.directory / f"wal-{self.next_seq:020d}.log"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o600)
        os.write(fd, MAGIC)
        os.fsync(fd)
        _fsync_dir(self.directory)  # the new file's name is durable too
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
            self._fd, self._size, self._path = fd, len(MAGIC), path

    def append(self, payload: bytes) -> int:
        """Append one record; returns its sequence number. Not yet durable: see commit()."""
        if len(payload) > MAX_RECORD:
            raise ValueError(f"WAL record of {len(payload)} bytes is over {MAX_RECORD}")
        if self.failed is not None:
            raise OSError(self.failed.errno, f"the WAL's background fsync failed "
                          f"({self.failed}); refusing writes until the worker restarts")
        if self._size >= self.rotate_bytes:
            self.commit()
            self._start_file()
        seq = self.next_seq
        record = REC.pack(len(payload), _crc(seq, payload), seq) + payload
        written = 0
        t0 = time.perf_counter()
        try:
            while written < len(record):
                written += os.write(self._fd, record[written:])
        except OSError:
            # e.g. ENOSPC: cut the partial record off so the log stays well formed, and
            # let the caller refuse the write.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        took = time.perf_counter() - t0
        self.append_seconds += took
        self.append_hist[bisect_left(LATENCY_BUCKETS, took)] += 1
        self._size += len(record)
        self.next_seq = seq + 1
        self._unsynced = True
        return seq

    def commit(self) -> None:
        """Call before acknowledging appended records: fsync now if the policy says so."""
        if self.policy == "always" and self._unsynced:
            self.sync()

    def tick(self, now: float | None = None) -> None:
        """For `everysec`: call about once a second; asks the background thread for an
        fsync (unless the last one is still running: then the next tick asks again)."""
        now = time.monotonic() if now is None else now
        if (self.policy == "everysec" and self._unsynced and now - self._last_sync >= 1.0
                and not self._sync_asked.is_set()):
            self._unsynced = False  # what is appended from now on waits for the next one
            self._last_sync = now
            if self._syncer is None:
                self._syncer = threading.Thread(target=self._sync_loop, daemon=True,
                                                name=f"wal-fsync {self.directory.name}")
                self._syncer.start()
            self._sync_asked.set()

    def _sync_loop(self) -> None:
        while True:
            self._sync_asked.wait()
            if self._stopping.is_set():
                return
            try:
                self._fsync()  # releases the GIL: the shard keeps serving meanwhile
            except OSError as exc:
                log.critical("WAL %s: background fsync failed: %s", self.directory, exc)
                self.failed = exc
            self._sync_asked.clear()
            if self._stopping.is_set():  # close() may have asked while this sync ran
                return

    def _fsync(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            t0 = time.perf_counter()
            os.fsync(self._fd)
            took = time.perf_counter() - t0
            self.fsync_seconds += took
            self.fsyncs += 1
            self.fsync_hist[bisect_left(LATENCY_BUCKETS, took)] += 1

    def sync(self) -> None:
        self._fsync()
        self._unsynced = False
        self._last_sync = time.monotonic()

    def rotate(self) -> int:
        """Start a new file (after a snapshot); returns the first seq it will hold. A file
        that holds no record yet is already the new file: it is kept."""
        self.sync()
        if self._size > len(MAGIC):
            self._start_file()
        return self.next_seq

    def drop_before(self, seq: int) -> list[Path]:
        """Delete whole files whose records are all below `seq` (covered by a snapshot)."""
        files = wal_files(self.directory)
        dropped = []
        for path, nxt in itertools.pairwise(files):
            if _first_seq(nxt) <= seq and path != self._path:
                path.unlink()
                dropped.append(path)
        if dropped:
            _fsync_dir(self.directory)
        return dropped

    def close(self) -> None:
        if self._syncer is not None:
            self._stopping.set()
            self._sync_asked.set()
            self._syncer.join()
            self._syncer = None
        if self._fd >= 0:
            if self.policy != "never":
                self.sync()
            with self._lock:
                os.close(self._fd)
                self._fd = -1


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
