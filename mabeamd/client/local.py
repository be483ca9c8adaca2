"""Same-host reads: a client's readers of the daemon's shard segments (storage/shm.py).

A variable read maps its shard's segment and answers with no round trip. When the segments
cannot be opened -- no read permission (the daemon's segments are mode 0640, for its group
or `[variables] shm_group`), or none on this host -- reads go over the wire: the SDK says so
once per process with a warning (a silent fallback cost a failed open on every read and
hid a tenfold slower read path), and tries the open again only after a pause that doubles
up to RETRY_MAX, or after a hello.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from mabeamd.storage import shm
from mabeamd.storage.sharding import shard_of

log = logging.getLogger("mabeamd.client")
SUPPORTED = shm.supported()  # seqlock reads are sound on x86-64 only (see shm.supported)
RETRY_MIN, RETRY_MAX = 1.0, 60.0
_warned: set[tuple[str, str]] = set()  # (dir, prefix): each warned about once per process


class LocalReads:
    def __init__(self, prefault: bool = False) -> None:
        self.prefault = prefault  # map segments populated (shm.SegmentReader)
        self.shm: dict[str, Any] | None = None  # {"dir", "prefix"} from hello
        self.shards = 0
        self._readers: dict[int, shm.SegmentReader] = {}
        self._retry_at = 0.0  # monotonic: no segment is opened before then
        self._pause = RETRY_MIN

    def hello(self, shm_info: dict[str, Any] | None, shards: int) -> None:
        """What a hello reply says; it also ends a pause (perhaps another daemon now, or
        its group changed)."""
        if shm_info != self.shm or shards != self.shards:  # another daemon: not its segments
            for reader in self._readers.values():
                reader.close()
            self._readers.clear()
        self.shm, self.shards = shm_info, shards
        self._retry_at = 0.0

    def get(self, name: str) -> dict[str, Any] | None:
        """The variable's record, None for "ask the daemon". Raises KeyError when the
        segment says there is no such variable."""
        if self.shm is None or not SUPPORTED or not self.shards:
            return None
        shard = shard_of(name, self.shards)
        reader = self._readers.get(shard) or self._open(shard)
        if reader is None:
            return None
        try:
            rec = reader.get(name)
        except shm.Unavailable:
            return None  # the writer is restarting: this read goes over the wire
        except (OSError, shm.SegmentError) as exc:  # the next generation could not be opened
            self._readers.pop(shard).close()
            self._failed(exc)
            return None
        if rec is None:
            raise KeyError(name)
        return rec

    def _open(self, shard: int) -> shm.SegmentReader | None:
        assert self.shm is not None
        if time.monotonic() < self._retry_at:
            return None
        try:
            reader = shm.SegmentReader(Path(self.shm["dir"]), self.shm["prefix"], shard,
                                       prefault=self.prefault)
        except (OSError, shm.SegmentError) as exc:
            self._failed(exc)
            return None
        self._pause = RETRY_MIN
        self._readers[shard] = reader
        return reader

    def _failed(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + self._pause
        self._pause = min(self._pause * 2, RETRY_MAX)
        assert self.shm is not None
        where = (str(self.shm["dir"]), str(self.shm["prefix"]))
        if isinstance(exc, shm.Unavailable) or where in _warned:
            # No segments here at all (another host, a daemon starting) is no fault.
            log.debug("shared-memory read not possible (%s); reading over the wire", exc)
            return
        _warned.add(where)
        log.warning(
            "cannot read the daemon's shared-memory segments %s/%s-* (%s): variables are "
            "read over the wire instead, one round trip each. For local reads, run this "
            "agent in the daemon's group or in [variables] shm_group (docs/operations.md, "
            "'Who can read what')", where[0], where[1], exc)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
