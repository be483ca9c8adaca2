"""`mabeamd --check-state`: read a stopped daemon's state directory and report what is wrong.

It loads every shard (snapshot + WAL) without writing anything and reports, per shard, its
variables and WAL records, and across shards:

- a shard that cannot be loaded (its WAL or snapshot refused, with the reason);
- misplaced names: held by a shard that does not own them under crc32 mod N (sharding.py).
  A name held only by a wrong shard is *moved*: put into its owner, deleted from the other;
- duplicated names: held by more than one shard. Nothing chooses between copies silently:
  the report lists every copy (shard, version, last modifier, time) and `--keep NAME=SHARD`
  says which one stays; the others are deleted (their WAL records stay until the next
  snapshot, so a mistake can still be undone by hand from the log).

`--repair` carries out what the report says it would do, as WAL records appended to the
shards concerned (the owner's put first, then the deletes), under the state directory's
lock, and refuses if any duplicate has no `--keep` or any shard cannot be loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from mabeamd.net import wire
from mabeamd.storage import snapshot
from mabeamd.storage.sharding import shard_of
from mabeamd.storage.statedir import META, StateDirError
from mabeamd.storage.variables import ShardStore, Variable
from mabeamd.storage.wal import WalCorrupt, WriteAheadLog, replay


@dataclass
class ShardReport:
    index: int
    variables: int = 0
    snapshot_seq: int = 0
    wal_records: int = 0
    error: str | None = None


@dataclass
class Report:
    state_dir: str
    shards: list[ShardReport] = field(default_factory=list)
    misplaced: list[dict[str, Any]] = field(default_factory=list)  # name, in, owner
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # name, owner, copies
    actions: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # why --repair would refuse

    @property
    def clean(self) -> bool:
        return not (self.misplaced or self.duplicates or any(s.error for s in self.shards))

    def as_dict(self) -> dict[str, Any]:
        return {"state_dir": self.state_dir, "clean": self.clean,
                "shards": [vars(s) for s in self.shards], "misplaced": self.misplaced,
                "duplicates": self.duplicates, "actions": self.actions,
                "blocked": self.blocked}


def _load(directory: Path, history: int, rep: ShardReport) -> ShardStore | None:
    store = ShardStore(history)
    try:
        seq, states = snapshot.load(directory)
        for s in states:
            store.apply({"op": "put", "var": s})
        for _, payload in replay(directory, after=seq, repair=False):
            store.apply(msgpack.unpackb(payload, raw=False))
            rep.wal_records += 1
    except (WalCorrupt, snapshot.SnapshotCorrupt, OSError, ValueError) as exc:
        rep.error = str(exc)
        return None
    rep.snapshot_seq, rep.variables = seq, len(store.vars)
    return store


def _copy(shard: int, var: Variable) -> dict[str, Any]:
    return {"shard": shard, "version": var.version, "modified_by": var.modified_by,
            "updated_at": var.updated_at, "value": var.value}


def check(state_dir: Path, history: int = 16, keep: dict[str, int] | None = None,
          ) -> tuple[Report, list[tuple[int, dict[str, Any]]]]:
    """The report, and the effects --repair would append: (shard, effect), in order."""
    keep = keep or {}
    try:
        count = int(json.loads((state_dir / META).read_text())["shards"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateDirError(f"{state_dir / META}: cannot read the state directory's "
                            f"metadata: {exc}") from exc
    report = Report(str(state_dir))
    stores: dict[int, ShardStore] = {}
    for i in range(count):
        rep = ShardReport(i)
        report.shards.append(rep)
        store = _load(state_dir / f"shard-{i}", history, rep)
        if store is None:
            report.blocked.append(f"shard {i} cannot be loaded: {rep.error}")
        else:
            stores[i] = store
    holders: dict[str, list[int]] = {}
    for i, store in stores.items():
        for name in store.vars:
            holders.setdefault(name, []).append(i)
    effects: list[tuple[int, dict[str, Any]]] = []
    for name in sorted(holders):
        where, owner = holders[name], shard_of(name, count)
        if where == [owner]:
            continue
        copies = [_copy(i, stores[i].vars[name]) for i in where]
        if len(where) == 1:
            report.misplaced.append({"name": name, "in": where[0], "owner": owner})
            chosen = where[0]
            report.actions.append(f"move {name!r} from shard {chosen} to shard {owner}")
        else:
            report.duplicates.append({"name": name, "owner": owner, "copies": copies})
            chosen_or_none = keep.get(name)
            if chosen_or_none is None:
                report.blocked.append(f"{name!r} is in shards {where}: say which copy stays "
                                      f"with --keep {name}=SHARD")
                continue
            if chosen_or_none not in where:
                report.blocked.append(f"--keep {name}={chosen_or_none}: shard "
                                      f"{chosen_or_none} holds no copy (copies in {where})")
                continue
            chosen = chosen_or_none
            report.actions.append(f"keep shard {chosen}'s copy of {name!r} (version "
                                  f"{stores[chosen].vars[name].version}) in shard {owner}; "
                                  f"delete the copies in {[i for i in where if i != owner]}")
        if chosen != owner:
            effects.append((owner, {"op": "put", "var": stores[chosen].vars[name].state()}))
        for i in where:
            if i != owner:
                effects.append((i, {"op": "delete", "name": name,
                                    "version": stores[i].vars[name].version + 1}))
    for name in sorted(set(keep) - set(holders)):
        report.blocked.append(f"--keep {name}=...: no shard holds {name!r}")
    return report, effects


def repair(state_dir: Path, effects: list[tuple[int, dict[str, Any]]]) -> None:
    """Append the effects to their shards' WALs (fsynced), in order."""
    for i in sorted({i for i, _ in effects}):
        directory = state_dir / f"shard-{i}"
        seq, _ = snapshot.load(directory)
        log = WriteAheadLog(directory, "always", after=seq)
        try:
            for _, effect in (e for e in effects if e[0] == i):
                log.append(wire.pack(effect))
            log.commit()
        finally:
            log.close()


def render(report: Report) -> str:
    lines = [f"state directory {report.state_dir}: {len(report.shards)} shards"]
    for s in report.shards:
        lines.append(f"  shard {s.index}: " + (f"REFUSED: {s.error}" if s.error else
                     f"{s.variables} variables (snapshot at {s.snapshot_seq}, "
                     f"{s.wal_records} WAL records after it)"))
    for m in report.misplaced:
        lines.append(f"misplaced: {m['name']!r} is in shard {m['in']}, owner is shard "
                     f"{m['owner']}")
    for d in report.duplicates:
        lines.append(f"duplicated: {d['name']!r} (owner: shard {d['owner']})")
        for c in d["copies"]:
            lines.append(f"    shard {c['shard']}: version {c['version']}, by "
                         f"{c['modified_by']!r} at {c['updated_at']:.3f}, value "
                         f"{json.dumps(c['value'], default=repr)[:60]}")
    lines += [f"would: {a}" for a in report.actions]
    lines += [f"cannot repair: {b}" for b in report.blocked]
    lines.append("clean" if report.clean else "problems found")
    return "\n".join(lines)
