"""A request's answer still to come (cluster mode: etcd has not answered yet).

Its own module, free of the etcd client, so that the worker and its shard endpoint can test
for it without importing aetcd on a single node.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any


class Pending:
    """Returned by a shard's handle() in place of a result: the worker awaits `result`
    (the (result, event) pair handle() would have returned) and replies then."""

    __slots__ = ("result",)

    def __init__(self, result: Awaitable[tuple[Any, dict[str, Any] | None]]) -> None:
        self.result = result
