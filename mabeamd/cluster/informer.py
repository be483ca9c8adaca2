"""A key prefix of etcd mirrored in memory: list, then watch from the listed revision (the
Kubernetes informer pattern), for the arbiter's views of the cluster (nodes, agents).

`items` is the prefix's current content as this process last heard it, key suffix -> the
decoded value. A broken watch is opened again from the last revision seen; one etcd has
compacted past (or any other failure) is listed afresh, and the callback told of what
changed in between. The shards' variable caches do the same with more care for ordering
against their own writes (cluster/shard.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aetcd
import aetcd.exceptions
import msgpack

from mabeamd.cluster.etcd import DOWN

log = logging.getLogger(__name__)
RETRY_PAUSE = 0.5


def _decode(raw: bytes) -> Any:
    try:
        return msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None


class Informer:
    def __init__(self, etcd: aetcd.Client, prefix: bytes,
                 on_change: Callable[[str, Any, Any], None] = lambda k, old, new: None) -> None:
        """`on_change(key, old, new)`: a key appeared (old None), changed, or went (new
        None); called from the event loop, never for a value that did not change."""
        self.etcd = etcd
        self.prefix = prefix
        self.items: dict[str, Any] = {}
        self.revision = 0
        self.on_change = on_change
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=1.0)

    async def _list(self) -> None:
        listed = await self.etcd.get_prefix(self.prefix)
        fresh = {kv.key[len(self.prefix):].decode(errors="replace"): _decode(kv.value)
                 for kv in listed.kvs}
        old, self.items = self.items, fresh
        self.revision = listed.header.revision
        for key in old.keys() | fresh.keys():
            if old.get(key) != fresh.get(key):
                self.on_change(key, old.get(key), fresh.get(key))
        self.ready.set()

    async def _run(self) -> None:
        listed = False
        while True:
            try:
                if not listed:
                    await self._list()
                    listed = True
                watch = await self.etcd.watch_prefix(self.prefix,
                                                     start_revision=self.revision + 1)
                try:
                    async for event in watch:
                        self._event(event)
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(watch.cancel(), 1.0)
            except asyncio.CancelledError:
                raise
            except aetcd.exceptions.RevisionCompactedError:
                listed = False
            except DOWN as exc:
                log.debug("watch of %s broke (%s); again from %d", self.prefix, exc,
                          self.revision + 1)
            except Exception:
                log.exception("watch of %s failed; listing it again", self.prefix)
                listed = False
            await asyncio.sleep(RETRY_PAUSE)

    def _event(self, event: Any) -> None:
        kv = event.kv
        self.revision = max(self.revision, kv.mod_revision)
        key = kv.key[len(self.prefix):].decode(errors="replace")
        old = self.items.get(key)
        if event.kind == "PUT":
            new = _decode(kv.value)
            self.items[key] = new
        else:
            new = None
            self.items.pop(key, None)
        if old != new:
            self.on_change(key, old, new)
