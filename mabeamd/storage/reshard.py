"""`mabeamd --reshard N`: change a stopped daemon's shard count.

Every variable is loaded from the old shards (snapshot + WAL), rehashed with
crc32(name) mod N and written as a snapshot of its new shard. The old shard directories are
kept beside the new ones, renamed `shard-I.before-reshard-<time>`, until the operator deletes
them. Refuses while a daemon holds the runtime directory, and refuses to touch a state
directory it cannot read completely: nothing is lost on any path.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgpack

from mabeamd.storage import snapshot
from mabeamd.storage.sharding import shard_of
from mabeamd.storage.statedir import META, StateDirError, write_private
from mabeamd.storage.variables import ShardStore
from mabeamd.storage.wal import replay


def load_shard(directory: Path, history: int) -> ShardStore:
    store = ShardStore(history)
    seq, states = snapshot.load(directory)
    for s in states:
        store.apply({"op": "put", "var": s})
    for _, payload in replay(directory, after=seq):
        store.apply(msgpack.unpackb(payload, raw=False))
    return store


def reshard(state_dir: Path, new: int, history: int = 16) -> dict[str, Any]:
    meta_path = state_dir / META
    try:
        meta = json.loads(meta_path.read_text())
        old = int(meta["shards"])
    except (OSError, ValueError, KeyError) as exc:
        raise StateDirError(f"{meta_path}: cannot read the state directory's metadata: {exc}") \
            from exc
    if new < 1:
        raise StateDirError("the new shard count must be at least 1")
    states: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i in range(old):
        store = load_shard(state_dir / f"shard-{i}", history)
        for name, v in store.vars.items():
            if name in seen:  # resharding would keep one copy, chosen by accident
                raise StateDirError(f"{name!r} is in shards {seen[name]} and {i}: run "
                                    "`mabeamd --check-state` and choose the copy to keep first")
            seen[name] = i
            states.append(v.state())
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for i in range(old):
        src = state_dir / f"shard-{i}"
        if src.exists():
            src.rename(state_dir / f"shard-{i}.before-reshard-{stamp}")
    per_shard: list[list[dict[str, Any]]] = [[] for _ in range(new)]
    for s in states:
        per_shard[shard_of(s["name"], new)].append(s)
    for i, part in enumerate(per_shard):
        d = state_dir / f"shard-{i}"
        d.mkdir(mode=0o700)
        snapshot.write(d, 0, part)
    meta["shards"] = new
    meta["resharded"] = {"from": old, "at": time.time()}
    write_private(meta_path, json.dumps(meta) + "\n")
    return {"from": old, "to": new, "variables": len(states),
            "backup": f"shard-*.before-reshard-{stamp}"}
