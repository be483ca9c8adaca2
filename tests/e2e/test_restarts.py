"""The lost write of 2026-11, as reported: snapshot, restart, acknowledged write, restart --
through a real daemon, mabeamctl, worker restarts and kill -9 of the whole daemon. (The state
machine in tests/unit/test_durability.py explores every such order on a shard.)"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

from mabeamd.testing import Daemon


def _ctl(d: Daemon, *args: str) -> Any:
    r = d.ctl(*args, "--json", "--socket", str(d.socket))
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout) if r.stdout.strip() else None


def test_a_write_after_snapshot_and_restart_survives_the_next_restart(
        make_daemon: Callable[..., Daemon]) -> None:
    """The report, step by step: create, snapshot, restart all workers, set (acknowledged:
    version 2), restart all workers again; the write must still be there."""
    d = make_daemon(workers=2).start()
    _ctl(d, "vars", "create", "{t}/a1", "1")
    _ctl(d, "vars", "create", "{t}/a2", "1")
    _ctl(d, "vars", "snapshot")
    _ctl(d, "workers", "restart", "all")
    assert _ctl(d, "vars", "set", "{t}/a1", '"acked-1"')["version"] == 2
    _ctl(d, "workers", "restart", "all")
    got = _ctl(d, "vars", "get", "{t}/a1")
    assert (got["version"], got["value"]) == (2, "acked-1")
    # Snapshots of shards with nothing new (one holds no variable at all) succeed too.
    shards = _ctl(d, "vars", "snapshot")["shards"]
    assert len(shards) == 2 and sum(s["variables"] for s in shards) == 2
    _ctl(d, "vars", "snapshot")


def test_a_write_after_snapshot_survives_two_kill9s_of_the_daemon(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon('[variables]\nfsync = "always"\n', workers=2).start()
    _ctl(d, "vars", "create", "{t}/a1", "1")
    _ctl(d, "vars", "snapshot")
    d.signal(signal.SIGKILL)
    d.wait()
    d.start()
    assert _ctl(d, "vars", "set", "{t}/a1", '"acked-1"')["version"] == 2
    d.signal(signal.SIGKILL)
    d.wait()
    d.start()
    got = _ctl(d, "vars", "get", "{t}/a1")
    assert (got["version"], got["value"]) == (2, "acked-1")


def test_state_files_are_private_and_an_open_state_directory_is_warned_about(
        make_daemon: Callable[..., Daemon]) -> None:
    """snapshot.mp holds every value and meta.json names the segments: 0600, like the WAL,
    and the shard directories 0700 (another local user once read values from a 0644
    snapshot). A state directory others can read is kept, with a warning saying so."""
    import stat

    d = make_daemon(workers=2)
    d.state_dir.mkdir(mode=0o755)
    d.state_dir.chmod(0o755)
    d.start()
    _ctl(d, "vars", "create", "secret", '"s3cr3t"')
    _ctl(d, "vars", "snapshot")
    assert f"state directory {d.state_dir} has mode 0755" in d.log()
    paths = list(d.state_dir.rglob("*"))
    assert any(p.name == "snapshot.mp" for p in paths)
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
