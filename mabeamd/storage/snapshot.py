"""Shard snapshots: every variable's state as of a WAL sequence number, written atomically.

    MBSNAP01 | seq u64 | crc32 u32 | length u64 | msgpack [state, ...]

Written to a temporary file, fsynced, renamed over `snapshot.mp` and the directory fsynced:
a crash leaves either the old snapshot or the new one, never a mix.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

MAGIC = b"MBSNAP01"
HEAD = struct.Struct("<8sQIQ")
NAME = "snapshot.mp"


class SnapshotCorrupt(Exception):
    pass


def write(directory: Path, seq: int, states: list[dict[str, Any]]) -> Path:
    body: bytes = msgpack.packb(states, use_bin_type=True)
    tmp = directory / f".{NAME}.tmp"
    # 0600: a snapshot holds every value (O_TRUNC: a tmp file left by a crash is rewritten).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # a leftover tmp file keeps its old mode through O_CREAT
    try:
        with open(fd, "wb") as f:
            f.write(HEAD.pack(MAGIC, seq, zlib.crc32(body), len(body)))
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        tmp.unlink(missing_ok=True)  # on a full disk, give the space of the part back
        raise
    final = directory / NAME
    os.replace(tmp, final)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


def load(directory: Path) -> tuple[int, Iterator[dict[str, Any]]]:
    """(seq, states) of the snapshot, or (0, empty) when there is none. The checksum is
    verified before this returns; the states are decoded one by one as they are iterated
    (a big shard's loader reports progress between them)."""
    path = directory / NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, iter(())
    if len(data) < HEAD.size:
        raise SnapshotCorrupt(f"{path}: too short")
    magic, seq, crc, length = HEAD.unpack_from(data)
    body = data[HEAD.size:]
    if magic != MAGIC or len(body) != length or zlib.crc32(body) != crc:
        raise SnapshotCorrupt(f"{path}: bad magic, length or checksum")
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(body), 1 << 20))
    unpacker.feed(body)
    count = unpacker.read_array_header()
    return seq, (unpacker.unpack() for _ in range(count))
