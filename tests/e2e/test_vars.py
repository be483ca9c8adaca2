"""Universal variables end to end: SDK, daemon, workers, WAL, shared memory, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mabeamd.client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    Exists,
    Forbidden,
    MabeamError,
    NotFound,
    NotRegistered,
    VersionMismatch,
)
from mabeamd.net.wire import WireError
from mabeamd.testing import Daemon


@pytest.fixture(params=[True, False], ids=["shard-endpoints", "agent-endpoint"])
def client(daemon: Daemon, request: pytest.FixtureRequest) -> Iterator[Client]:
    """The same rules whether requests go to the shard endpoints (one hop) or through the
    agent endpoint (the arbiter forwards them)."""
    with Client(daemon.agent_endpoint, timeout=5, direct=request.param) as c:
        c.register("alice")
        c.register("bob")
        yield c


def test_round_trip_local_and_wire_agree(client: Client) -> None:
    created = client.create_var("alice", "cfg/limit", 10, type="int",
                                constraints={"min": 0, "max": 100})
    assert (created["version"], created["owner"], created["value"]) == (1, "alice", 10)
    client.set_var("bob", "cfg/limit", 20)
    wire_view = client.get_var("cfg/limit", local=False)
    local_view = client.get_var("cfg/limit", local=True)
    assert wire_view == local_view
    assert (wire_view["value"], wire_view["version"], wire_view["modified_by"]) == (20, 2, "bob")
    hist = client.var_history("cfg/limit")
    assert [(h["version"], h["value"]) for h in hist["history"]] == [(1, 10)]
    client.delete_var("alice", "cfg/limit")
    for local in (True, False):
        with pytest.raises(NotFound):
            client.get_var("cfg/limit", local=local)


def test_listing_spans_shards_in_name_order(client: Client) -> None:
    for i in range(30):
        client.create_var("alice", f"fleet/{i:02d}", i)
    client.create_var("alice", "other", 0)
    page = client.list_vars("fleet/", limit=12)
    assert [v["name"] for v in page["vars"]] == [f"fleet/{i:02d}" for i in range(12)]
    rest = client.list_vars("fleet/", after=page["next"], limit=100)
    assert [v["name"] for v in rest["vars"]] == [f"fleet/{i:02d}" for i in range(12, 30)]
    assert rest["next"] is None


def test_cas_race_exactly_one_wins(daemon: Daemon) -> None:
    with Client(daemon.agent_endpoint) as setup:
        setup.register("setup")
        setup.create_var("setup", "leader", None)

    async def contender(agent: str) -> str:
        async with AsyncClient(daemon.agent_endpoint) as c:
            await c.register(agent)
            try:
                await c.set_var(agent, "leader", agent, expect_version=1)
                return "won"
            except VersionMismatch:
                return "lost"

    async def race(round_: int) -> list[str]:
        return await asyncio.gather(*(contender(f"node-{round_}-{i}") for i in range(6)))

    for round_ in range(3):
        results = asyncio.run(race(round_))
        assert results.count("won") == 1, results
        with Client(daemon.agent_endpoint) as c:
            v = c.get_var("leader")
            assert v["version"] == 2 and v["value"] == v["modified_by"]
            c.register(f"reset-{round_}")
            c.delete_var(f"reset-{round_}", "leader", expect_version=2)
            c.create_var(f"reset-{round_}", "leader", None)


@pytest.mark.parametrize("create, actor, change, error", [
    ({"access": "owner_only"}, "bob", ("set", 1), Forbidden),
    ({"access": "restricted", "writers": ["carol"]}, "bob", ("set", 1), Forbidden),
    ({"access": "coordinated"}, "alice", ("set", 1), Forbidden),
    ({"policy": "cas_required"}, "bob", ("set", 1), BadRequest),
    ({"policy": "session"}, "bob", ("set", 1), Conflict),
    ({"type": "int"}, "bob", ("set", "seven"), MabeamError),  # constraint_violation
    ({"constraints": {"enum": [1, 2]}}, "bob", ("set", 3), MabeamError),
    ({}, "bob", ("set", "x" * (2 << 20)), MabeamError),  # too_large (or cut off)
])
def test_refusals_change_nothing(client: Client, create: dict[str, Any], actor: str,
                                 change: tuple[str, Any], error: type[Exception]) -> None:
    client.create_var("alice", "guarded", 1, **create)
    with pytest.raises(error):
        client.set_var(actor, "guarded", change[1])
    v = client.get_var("guarded")
    assert (v["value"], v["version"]) == (1, 1)


def test_first_write_wins_and_codes(client: Client) -> None:
    client.create_var("alice", "claim", None, policy="first_write_wins")
    client.set_var("bob", "claim", "bob")
    with pytest.raises(Conflict):
        client.set_var("alice", "claim", "alice")
    with pytest.raises(Exists):
        client.create_var("bob", "claim", 1)
    with pytest.raises(NotRegistered):
        client.set_var("mallory", "claim", 1)  # not an agent of this connection
    client.create_var("alice", "typed", 5, type="int")
    with pytest.raises(MabeamError) as exc:
        client.set_var("bob", "typed", "five")
    assert exc.value.code == "constraint_violation"


def test_watch_sees_changes(daemon: Daemon) -> None:
    async def scenario() -> list[tuple[str, int]]:
        async with AsyncClient(daemon.agent_endpoint) as c:
            await c.register("w")
            seen: list[tuple[str, int]] = []

            async def watch() -> None:
                async for ev in c.watch_vars("room/"):
                    seen.append((ev["op"], ev["version"]))
                    if len(seen) == 3:
                        return

            task = asyncio.create_task(watch())
            await asyncio.sleep(0.2)
            await c.create_var("w", "room/temp", 20)
            await c.create_var("w", "elsewhere", 0)  # not watched
            await c.set_var("w", "room/temp", 21)
            await c.delete_var("w", "room/temp")
            await asyncio.wait_for(task, 5)
            return seen

    assert asyncio.run(scenario()) == [("create", 1), ("set", 2), ("delete", 3)]


def _write_load(endpoint: str, acked: list[tuple[str, int, Any]], stop: threading.Event,
                prefix: str) -> None:
    """Set variables until stopped, recording every acknowledged (name, version, value)."""
    with Client(endpoint, timeout=3) as c:
        c.register(f"loader-{prefix}")
        i = 0
        while not stop.is_set():
            name = f"{prefix}/{i % 40}"
            value = {"i": i, "pad": "x" * (i % 50)}
            try:
                if i < 40:
                    r = c.create_var(f"loader-{prefix}", name, value)
                else:
                    r = c.set_var(f"loader-{prefix}", name, value)
            except (MabeamError, WireError):
                time.sleep(0.01)  # shard restarting: retry later (not acknowledged)
                i += 1 if i >= 40 else 0
                continue
            acked.append((name, r["version"], value))
            i += 1


def read_back(c: Client, name: str, local: bool = False) -> dict[str, Any]:
    """`busy` means a shard's worker is restarting: retry, as a client should."""
    from mabeamd.client import Busy

    deadline = time.monotonic() + 15
    while True:
        try:
            return c.get_var(name, local=local)
        except Busy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _latest(acked: list[tuple[str, int, Any]]) -> dict[str, tuple[int, Any]]:
    last: dict[str, tuple[int, Any]] = {}
    for name, version, value in acked:
        if version > last.get(name, (0, None))[0]:
            last[name] = (version, value)
    return last


def assert_acknowledged_present(d: Daemon, acked: list[tuple[str, int, Any]],
                                also_local: bool = False) -> None:
    """Every acknowledged write is there: its version or a later one, and at its own version
    the value written."""
    with Client(d.agent_endpoint) as c:
        for name, (version, value) in _latest(acked).items():
            v = read_back(c, name)
            assert v["version"] >= version
            if v["version"] == version:
                assert v["value"] == value
            if also_local:
                assert read_back(c, name, local=True) == v


def test_kill9_worker_mid_write_loses_nothing(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon("\n[variables]\nfsync = \"always\"\n").start()
    acked: list[tuple[str, int, Any]] = []
    stop = threading.Event()
    t = threading.Thread(target=_write_load, args=(d.agent_endpoint, acked, stop, "k"))
    t.start()
    time.sleep(0.5)
    for _ in range(3):
        victim = d.workers()[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        d.wait_until(lambda v=victim: d.workers()[0]["state"] == "running" and
                     d.workers()[0]["pid"] != v, what="worker replaced")
        time.sleep(0.3)
    stop.set()
    t.join(10)
    assert len(acked) > 100
    assert_acknowledged_present(d, acked, also_local=True)  # they survived the crashes


def test_kill9_daemon_with_fsync_always_loses_no_acknowledged_write(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon("\n[variables]\nfsync = \"always\"\n").start()
    acked: list[tuple[str, int, Any]] = []
    stop = threading.Event()
    t = threading.Thread(target=_write_load, args=(d.agent_endpoint, acked, stop, "d"))
    t.start()
    time.sleep(1.0)
    d.signal(signal.SIGKILL)  # the whole daemon, mid-load
    d.wait()
    stop.set()
    t.join(10)
    assert len(acked) > 100
    d.start()  # same state directory: snapshot + WAL replay
    assert_acknowledged_present(d, acked)


def test_shard_count_is_pinned_by_the_state_directory(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2).start()
    assert d.stop() == 0
    d.config_path.write_text(d.config_path.read_text().replace("count = 2", "count = 3"))
    d.start(wait_ready=False)
    assert d.wait() == 78
    assert "holds 2 shards but workers.count gives 3" in d.log()


def test_mabeamctl_vars(daemon: Daemon) -> None:
    import json
    import subprocess
    import sys

    sock = ["--socket", str(daemon.socket)]
    r = daemon.ctl("vars", "create", "ops/mode", '"auto"', "--enum", '["auto", "manual"]', *sock)
    assert r.returncode == 0, r.stderr
    assert "ops/mode" in r.stdout and '"auto"' in r.stdout
    watcher = subprocess.Popen(
        [sys.executable, "-m", "mabeamd.ctl.main", "vars", "watch", "ops/", "--count", "2",
         "--json", *sock], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Its subscription has reached the publisher (a condition, not a guess at how long).
    daemon.wait_until(lambda: daemon.call("status")["event_subscriptions"] >= 1, timeout=15)
    r = daemon.ctl("vars", "set", "ops/mode", '"manual"', "--expect-version", "1", *sock)
    assert r.returncode == 0, r.stderr
    assert "version 2" in r.stdout
    r = daemon.ctl("vars", "set", "ops/mode", '"broken"', *sock)
    assert r.returncode == 1 and "constraint_violation" in r.stderr
    r = daemon.ctl("vars", "set", "ops/mode", "not json", *sock)
    assert r.returncode == 2 and "must be JSON" in r.stderr
    r = daemon.ctl("vars", "create", "ops/count", "3", "--type", "int", *sock)
    assert r.returncode == 0
    out, _ = watcher.communicate(timeout=10)
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["name"], e["op"]) for e in events] == [("ops/mode", "set"), ("ops/count", "create")]
    r = daemon.ctl("vars", "list", "ops/", "--json", *sock)
    assert [v["name"] for v in json.loads(r.stdout)["vars"]] == ["ops/count", "ops/mode"]
    r = daemon.ctl("vars", "history", "ops/mode", *sock)
    assert r.returncode == 0 and '"auto"' in r.stdout
    r = daemon.ctl("vars", "get", "nope", *sock)
    assert r.returncode == 1 and "no variable 'nope'" in r.stderr
    r = daemon.ctl("vars", "snapshot", "--json", *sock)
    assert r.returncode == 0, r.stderr
    shards = json.loads(r.stdout)["shards"]
    assert sum(s["variables"] for s in shards) == 2
    r = daemon.ctl("vars", "delete", "ops/count", *sock)
    assert r.returncode == 0 and "deleted" in r.stdout
    with Client(daemon.agent_endpoint) as c:
        with pytest.raises(NotFound):
            c.get_var("ops/count")
        assert c.get_var("ops/mode")["value"] == "manual"


def test_restart_from_snapshot_plus_wal_tail(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon("\n[variables]\nsnapshot_every = 25\nhistory = 3\n").start()
    with Client(d.agent_endpoint) as c:
        c.register("s")
        for i in range(40):  # crosses snapshot_every: a snapshot, then a WAL tail
            c.create_var("s", f"snap/{i}", i)
        for i in range(0, 40, 3):
            c.set_var("s", f"snap/{i}", -i)
        c.delete_var("s", "snap/1")
        expected = {v["name"]: (v["value"], v["version"])
                    for v in c.list_vars("snap/", limit=1000)["vars"]}
    snaps = list(d.state_dir.glob("shard-*/snapshot.mp"))
    assert snaps, "no snapshot was taken"
    d.signal(signal.SIGKILL)
    d.wait()
    d.start()
    with Client(d.agent_endpoint) as c:
        got = {v["name"]: (v["value"], v["version"])
               for v in c.list_vars("snap/", limit=1000)["vars"]}
        assert got == expected
        assert len(c.var_history("snap/3")["history"]) == 1


def test_reshard_moves_every_variable(make_daemon: Callable[..., Daemon]) -> None:
    import subprocess
    import sys

    d = make_daemon(workers=2).start()
    with Client(d.agent_endpoint) as c:
        c.register("r")
        for i in range(60):
            c.create_var("r", f"rs/{i}", {"i": i})
        c.set_var("r", "rs/7", "seven")
        before = {v["name"]: (v["value"], v["version"])
                  for v in c.list_vars("rs/", limit=1000)["vars"]}
    cmd = [sys.executable, "-m", "mabeamd", "--config", str(d.config_path), "--runtime-dir",
           str(d.run_dir), "--state-dir", str(d.state_dir), "--reshard", "3"]
    running = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert running.returncode == 1 and "is in use by another mabeamd" in running.stderr
    assert d.stop() == 0
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "60 variables from 2 to 3 shards" in done.stdout
    assert len(list(d.state_dir.glob("shard-*.before-reshard-*"))) == 2
    d.config_path.write_text(d.config_path.read_text().replace("count = 2", "count = 3"))
    d.start()
    with Client(d.agent_endpoint) as c:
        after = {v["name"]: (v["value"], v["version"])
                 for v in c.list_vars("rs/", limit=1000)["vars"]}
        assert after == before
        assert c.get_var("rs/7", local=True)["value"] == "seven"
        assert len(c.var_history("rs/7")["history"]) == 1
