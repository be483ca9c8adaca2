"""mabeamctl backup DIR (online, consistent, with a manifest of checksums) and
mabeamd --restore DIR (offline): backup -> wipe -> restore -> compare."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mabeamd.client import Client, MabeamError
from mabeamd.testing import Daemon, short_tmpdir


def _everything(d: Daemon) -> dict[str, Any]:
    out: dict[str, Any] = {}
    page = d.call("vars.list", {"prefix": "", "limit": 1000})
    while True:
        out.update({v["name"]: (v["value"], v["version"], v["modified_by"])
                    for v in page["vars"]})
        if not page["next"]:
            return out
        page = d.call("vars.list", {"prefix": "", "after": page["next"], "limit": 1000})


def _restore(d: Daemon, source: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mabeamd", "--config", str(d.config_path),
                           "--state-dir", str(d.state_dir), "--restore", str(source)],
                          capture_output=True, text=True, check=False, timeout=120)


def test_backup_wipe_restore_compare(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2).start()
    with Client(d.agent_endpoint) as c:
        c.register("b")
        for i in range(300):
            c.create_var("b", f"bk/{i}", {"i": i})
        for i in range(0, 300, 3):
            c.set_var("b", f"bk/{i}", f"changed-{i}")
        c.delete_var("b", "bk/1")
        # Writes keep going during the backup: it must not stop them, and what it holds is
        # a consistent state of each shard (every copied variable as it was at some
        # acknowledged version).
        stop = threading.Event()
        acked: list[Any] = [{"i": 2}]  # what bk/2 held at some acknowledged moment

        def writer() -> None:
            n = 0
            with Client(d.agent_endpoint) as w:
                w.register("w")
                while not stop.is_set():
                    n += 1
                    try:
                        w.set_var("w", "bk/2", f"during-{n}")
                        acked.append(f"during-{n}")
                    except MabeamError:
                        pass

        t = threading.Thread(target=writer)
        t.start()
        target = short_tmpdir() / "backup"
        r = d.ctl("backup", str(target), "--json", "--socket", str(d.socket))
        stop.set()
        t.join(20)
        assert r.returncode == 0, r.stdout + r.stderr
        out = json.loads(r.stdout)
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["format"] == "mabeamd-backup-1" and manifest["shards"] == 2
    assert [f["shard"] for f in manifest["files"]] == [0, 1] == [s["shard"] for s in out["shards"]]
    r = d.ctl("backup", str(target), "--socket", str(d.socket))  # not into a used directory
    assert r.returncode == 1 and "not an empty directory" in r.stderr

    assert d.stop() == 0
    before = _everything_offline(d)
    assert d.stop() == 0
    shutil.rmtree(d.state_dir)  # the wipe
    r = _restore(d, target)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checksums verified" in r.stdout
    d.start()
    after = _everything(d)
    # The backup was taken while bk/2 kept changing: it holds one of its acknowledged values;
    # everything else is exactly as it was.
    assert after.pop("bk/2")[0] in acked and len(acked) > 1
    before.pop("bk/2")
    assert after == before
    assert "bk/1" not in after and after["bk/3"][0] == "changed-3" and after["bk/4"][0] == {"i": 4}


def _everything_offline(d: Daemon) -> dict[str, Any]:
    """The stopped daemon's variables, straight from its state directory."""
    from mabeamd.storage import checkstate

    out: dict[str, Any] = {}
    for i in range(2):
        rep = checkstate.ShardReport(i)
        store = checkstate._load(d.state_dir / f"shard-{i}", 16, rep)
        assert store is not None, rep.error
        out.update({n: (v.value, v.version, v.modified_by) for n, v in store.vars.items()})
    return out


def test_restore_refuses_damage_and_a_used_state_directory(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2).start()
    d.call("vars.create", {"name": "r/1", "value": 1})
    target = short_tmpdir() / "b"
    assert d.ctl("backup", str(target), "--socket", str(d.socket)).returncode == 0
    assert d.stop() == 0
    r = _restore(d, target)  # the state directory is in use (it has shards)
    assert r.returncode == 1 and "is not empty" in r.stderr
    other = make_daemon(workers=2)
    snap = target / "shard-0" / "snapshot.mp"
    data = bytearray(snap.read_bytes())
    data[-1] ^= 0xFF
    snap.write_bytes(bytes(data))
    r = _restore(other, target)
    assert r.returncode == 1 and "checksum mismatch" in r.stderr
    assert not (other.state_dir / "meta.json").exists()  # nothing was written
