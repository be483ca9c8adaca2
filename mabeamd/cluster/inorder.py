"""Work on one key after the work queued before it on the same key, in arrival order;
other keys' work runs alongside (a shard's writes of one name, a directory's claims and
releases of one agent id)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class InOrder:
    def __init__(self) -> None:
        self._last: dict[str, asyncio.Future[None]] = {}  # the last work queued per key

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        before = self._last.get(key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last[key] = mine
        try:
            if before is not None:
                await before
            return await work()
        finally:
            mine.set_result(None)
            if self._last.get(key) is mine:
                del self._last[key]
