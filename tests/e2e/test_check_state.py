"""`mabeamd --check-state [--repair --keep NAME=SHARD]` on a state directory whose names were
split across shards (as shard endpoints that accepted names they did not own left them)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from mabeamd.storage import snapshot
from mabeamd.storage.sharding import shard_of
from mabeamd.storage.wal import WriteAheadLog, wal_files
from mabeamd.testing import Daemon


def _put(d: Daemon, shard: int, name: str, value: Any, version: int, by: str) -> None:
    """Write a variable into a shard's WAL directly, as the bug did through a wrong worker."""
    directory = d.state_dir / f"shard-{shard}"
    seq, _ = snapshot.load(directory)
    log = WriteAheadLog(directory, "always", after=seq)
    state = {"name": name, "value": value, "version": version, "type": "any", "owner": by,
             "modified_by": by, "created_at": 1.0, "updated_at": float(version),
             "access": "public", "writers": [], "policy": "last_write_wins",
             "constraints": None}
    log.append(msgpack.packb({"op": "put", "var": state}, use_bin_type=True))
    log.commit()
    log.close()


def _check(d: Daemon, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mabeamd", "--config", str(d.config_path),
                           "--state-dir", str(d.state_dir), "--check-state", *extra],
                          capture_output=True, text=True, check=False, timeout=60)


def _wal_bytes(state_dir: Path) -> dict[str, bytes]:
    return {str(f): f.read_bytes() for i in (0, 1) for f in wal_files(state_dir / f"shard-{i}")}


def test_check_state_finds_and_repairs_split_names(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2).start()
    d.call("vars.create", {"name": "ok/1", "value": "fine"})
    assert d.stop() == 0
    assert _check(d).returncode == 0
    names = [f"split/{i}" for i in range(40)]
    moved = next(n for n in names if shard_of(n, 2) == 0)
    dup = next(n for n in names if shard_of(n, 2) == 1)
    _put(d, 1, moved, "only-copy", 3, "alice")  # in the wrong shard only
    _put(d, 1, dup, "owner-copy", 2, "bob")  # in its own shard...
    _put(d, 0, dup, "stray-copy", 5, "carol")  # ...and in the other one
    before = _wal_bytes(d.state_dir)

    r = _check(d, "--json")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["clean"] is False
    assert report["misplaced"] == [{"name": moved, "in": 1, "owner": 0}]
    [found] = report["duplicates"]
    assert found["name"] == dup and found["owner"] == 1
    assert sorted((c["shard"], c["version"], c["value"]) for c in found["copies"]) == \
        [(0, 5, "stray-copy"), (1, 2, "owner-copy")]
    assert any(dup in b and "--keep" in b for b in report["blocked"])
    assert _wal_bytes(d.state_dir) == before  # a check writes nothing

    r = _check(d, "--repair")  # a duplicate without --keep: refused, nothing written
    assert r.returncode == 1 and "nothing written" in r.stdout, r.stdout + r.stderr
    assert _wal_bytes(d.state_dir) == before
    r = _check(d, "--repair", "--keep", f"{dup}=7")
    assert r.returncode == 1 and "holds no copy" in r.stdout
    r = _check(d, "--keep", f"{dup}=0")
    assert r.returncode == 2 and "--keep goes with --repair" in r.stderr

    r = _check(d, "--repair", "--keep", f"{dup}=0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "repaired: 2 action(s)" in r.stdout
    assert _check(d).returncode == 0  # clean now

    d.start()
    listed = d.call("vars.list", {"prefix": ""})["vars"]
    assert sorted(v["name"] for v in listed) == sorted(["ok/1", moved, dup])
    got = {v["name"]: (v["value"], v["version"]) for v in listed}
    assert got[moved] == ("only-copy", 3)
    assert got[dup] == ("stray-copy", 5)  # the copy the operator chose


def test_check_state_refuses_while_the_daemon_runs(daemon: Daemon) -> None:
    r = _check(daemon)
    assert r.returncode == 1 and "is in use by another mabeamd" in r.stderr
