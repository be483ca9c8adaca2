"""A full disk under the state directory: writes are refused with a documented code, one
log line now and then (not a traceback per request onto the same full disk), a visible
state in `status`; nothing acknowledged is lost, and writes come back when space does.

The state directory is a real, small tmpfs mounted for the test (root only; skipped
elsewhere, e.g. a developer's unprivileged machine)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from mabeamd.client import Client, MabeamError
from mabeamd.testing import Daemon


@pytest.fixture
def small_disk(make_daemon: Callable[..., Daemon]) -> Iterator[Daemon]:
    d = make_daemon(workers=1)
    d.state_dir.mkdir(mode=0o700)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs",
                              str(d.state_dir)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield d
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(d.state_dir)], check=False)


def test_a_full_disk_refuses_writes_clearly_and_loses_nothing(small_disk: Daemon) -> None:
    d = small_disk
    d.start()
    filler = d.state_dir / "filler"  # an operator's file, to free later
    filler.write_bytes(b"\0" * (1 << 20))
    acked: dict[str, str] = {}
    refused = []
    with Client(d.agent_endpoint) as c:
        c.register("filler")
        for i in range(200):  # 200 x 40 KB: far more than the 2 MiB left
            value = f"{i}-" + "x" * 40_000
            try:
                c.create_var("filler", f"fill/{i}", value)
                acked[f"fill/{i}"] = value
            except MabeamError as exc:
                refused.append((f"fill/{i}", exc))
        assert acked and refused
        assert {e.code for _, e in refused} == {"storage_error"}
        assert "nothing was changed" in refused[0][1].message
        d.wait_until(lambda: d.call("status")["storage"].get("0", {}).get("refused", 0)
                     >= len(refused), timeout=10, what="status to count the refusals")
        status = d.call("status")
        assert "the disk refuses shard(s) 0" in status["summary"]
        assert status["storage"]["0"]["errno"] == "ENOSPC"
        assert status["workers"]["running"] == 1  # the worker did not crash over it
        log = d.log()
        assert "Traceback" not in log
        assert 1 <= log.count("refused by the disk") <= 3  # rate-limited, not per request
        for name, _ in refused[:5]:  # refused means not there
            with pytest.raises(MabeamError):
                c.get_var(name, local=False)
        # Space comes back: so do writes, and the state clears.
        filler.unlink()
        c.create_var("filler", "fill/after", "ok")
        acked["fill/after"] = "ok"
        d.wait_until(lambda: not d.call("status")["storage"], timeout=10,
                     what="the storage state to clear")
        assert "the disk takes writes again" in d.log()
    assert d.stop() == 0
    d.start()  # everything acknowledged survived
    with Client(d.agent_endpoint) as c:
        for name, value in acked.items():
            assert c.get_var(name, local=False)["value"] == value
