"""Which shard a variable lives in: shared by the daemon and the SDK (same-host reads).

    shard = crc32(UTF-8 key) mod N    (N fixed when the state directory was created)

The key is the name, or, when the name holds a `{tag}` (a "{", then at least one character,
then "}"), just the tag between the first "{" and the next "}" -- as in Redis Cluster. Names
sharing a tag share a shard, which a coordination session needs: it changes its variables
atomically, in one shard's WAL.
"""

from __future__ import annotations

import zlib


def shard_key(name: str) -> str:
    start = name.find("{")
    if start >= 0:
        end = name.find("}", start + 1)
        if end > start + 1:
            return name[start + 1:end]
    return name


def shard_of(name: str, shards: int) -> int:
    return zlib.crc32(shard_key(name).encode()) % shards
