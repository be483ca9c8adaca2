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
              (~4 ms for a second of 20k writes on the benchmark machine), and inline it
              would stall every request of the shard once a second. A failed background
              fsync makes every later append fail: nothing more is acknowledged on a log
              that may not be durable.
    never     leave it to the kernel

Replay reads every file in order. A record cut short or failing its CRC at the end of the
last file is a torn tail (the write the crash interrupted, never acknowledged): it is
discarded and the file truncated there. Anything wrong before that point is corruption:
WalCorrupt, and the daemon refuses to start rather than drop acknowledged writes silently.
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
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"MBWAL001"
REC = struct.Struct("<IIQ")
POLICIES = ("always", "everysec", "never")
MAX_RECORD = 1 << 30


class WalCorrupt(Exception):
    pass


def _crc(seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<Q", seq)))


def wal_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def _first_seq(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def replay(directory: Path, after: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yield (seq, payload) for every record with seq > after, truncating a torn tail."""
    files = wal_files(directory)
    expected: int | None = None
    for n, path in enumerate(files):
        last = n == len(files) - 1
        with open(path, "r+b") as f:
            data = f.read()
            if data[:8] != MAGIC:
                if last and len(data) < 8:  # created, crashed before the magic was written
                    f.truncate(0)
                    f.write(MAGIC)
                    continue
                raise WalCorrupt(f"{path}: not a mabeamd WAL file")
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
                    log.warning("%s: torn tail at byte %d (%s): %d bytes of an unacknowledged "
                                "write discarded", path, pos, bad, len(data) - pos)
                    f.truncate(pos)
                    break
                if seq > after:
                    yield seq, data[pos + REC.size:end]
                expected = seq + 1
                pos = end


class WriteAheadLog:
    def __init__(self, directory: Path, policy: str = "everysec",
                 rotate_bytes: int = 64 << 20) -> None:
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
        self.next_seq = 1
        for seq, _ in replay(self.directory):  # also repairs a torn tail
            self.next_seq = seq + 1
        files = wal_files(self.directory)
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
        try:
            while written < len(record):
                written += os.write(self._fd, record[written:])
        except OSError:
            # e.g. ENOSPC: cut the partial record off so the log stays well formed, and
            # let the caller refuse the write.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
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
            self.fsync_seconds += time.perf_counter() - t0
            self.fsyncs += 1

    def sync(self) -> None:
        self._fsync()
        self._unsynced = False
        self._last_sync = time.monotonic()

    def rotate(self) -> int:
        """Start a new file (after a snapshot); returns the first seq it will hold."""
        self.sync()
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
