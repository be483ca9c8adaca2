"""CURVE on an agent endpoint: nothing without an allowed key, and keys own their ids."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq.auth

from mabeamd.client import Client, ConnectionLost, Forbidden, Timeout
from mabeamd.testing import Daemon, free_port, short_tmpdir
from tests.e2e.test_audit import records


def keygen(directory: Path, name: str) -> None:
    r = subprocess.run([sys.executable, "-m", "mabeamd.ctl.main", "keys", "generate", name,
                        "--dir", str(directory)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert (directory / f"{name}.key_secret").stat().st_mode & 0o077 == 0


@pytest.fixture
def curve_daemon(make_daemon: Callable[..., Daemon]) -> tuple[Daemon, str, Path]:
    keys = short_tmpdir()
    allowed = keys / "authorized"
    allowed.mkdir()
    for name in ("server", "alice", "bob", "mallory"):
        keygen(keys, name)
    for name in ("alice", "bob"):  # mallory's key is not on the allow-list
        (allowed / f"{name}.key").write_text((keys / f"{name}.key").read_text())
    port = free_port()
    d = make_daemon(f"""
[agents]
endpoints = ["curve+tcp://127.0.0.1:{port}", "ipc://{{run}}/agents.sock"]
shard_endpoint = "ipc://{{run}}/shard"
heartbeat_interval = 0.5
[events]
endpoint = ""
[security]
server_key = "{keys / 'server.key_secret'}"
authorized_keys = "{allowed}"
""")
    d.start()
    return d, f"tcp://127.0.0.1:{port}", keys


def keyed(endpoint: str, keys: Path, name: str) -> Client:
    server_public, _ = zmq.auth.load_certificate(keys / "server.key")
    pair = zmq.auth.load_certificate(keys / f"{name}.key_secret")
    assert pair[1] is not None
    return Client(endpoint, timeout=2, server_key=server_public,
                  client_keys=(pair[0], pair[1]))


def test_unauthenticated_client_gets_nothing(curve_daemon: tuple[Daemon, str, Path]) -> None:
    d, endpoint, keys = curve_daemon
    with Client(endpoint, timeout=1) as plain, pytest.raises((ConnectionLost, Timeout)):
        plain.request("ping")
    with keyed(endpoint, keys, "mallory") as stranger, pytest.raises((ConnectionLost, Timeout)):
        stranger.request("ping")
    assert d.call("status")["agents"]["total"] == 0
    assert d.call("ping")["pong"]  # the daemon itself is fine
    # The audit log has the refused key, once per window however often its client retried.
    mallory = (keys / "mallory.key").read_text()
    d.wait_until(lambda: any(r["key"] in mallory for r in records(d, "auth_failure")),
                 timeout=10)
    failures = [r for r in records(d, "auth_failure") if r["key"] in mallory]
    assert len(failures) == 1 and failures[0]["mechanism"] == "CURVE", failures
    assert failures[0]["address"] and failures[0]["repeats"] == 0


def test_allowed_key_works_and_owns_its_namespace(
        curve_daemon: tuple[Daemon, str, Path]) -> None:
    d, endpoint, keys = curve_daemon
    with keyed(endpoint, keys, "alice") as alice, keyed(endpoint, keys, "bob") as bob:
        hello = alice.register("alice")
        # Shard endpoints are plain: a CURVE client keeps its traffic on the curve+ endpoint.
        assert "shard_endpoints" not in hello and "credential" not in hello
        assert alice.aio._routes is None
        alice.create_var("alice", "curve/x", 1)
        assert alice.set_var("alice", "curve/x", 2)["version"] == 2
        alice.register("alice/worker-1", ["w"])
        alice.register("free-agent")  # outside any key's namespace: anyone may
        assert alice.get_agent("alice/worker-1")["principal"] == "alice"
        with pytest.raises(Forbidden):
            alice.register("bob/imposter")
        with pytest.raises(Forbidden):
            bob.register("alice")
        bob.register("bob")
        shown = d.call("agents.show", {"agent": "alice"})
        assert shown["principal"] == "alice"
        assert shown["connection"]["endpoint"].startswith("curve+tcp://")
        # A plain (loopback ipc) client cannot take ids of a key's namespace either.
        with Client(d.agent_endpoint, timeout=2) as plain:
            with pytest.raises(Forbidden):
                plain.register("alice/sneaky")
            assert plain.register("visitor")["credential"]  # on the plain endpoint: offered
    # Closing a client says bye for its agents (the ids are free again at once).
    assert d.call("agents.list")["agents"] == []


def test_same_key_may_take_over_its_own_id(curve_daemon: tuple[Daemon, str, Path]) -> None:
    d, endpoint, keys = curve_daemon
    with keyed(endpoint, keys, "alice") as first:
        first.register("alice/svc")
        with keyed(endpoint, keys, "alice") as second:
            # A restarted process holding the same key: no token needed.
            assert second.register("alice/svc")["created"] is False
    d.wait_until(lambda: bool(records(d, "takeover")), timeout=10)
    takeovers = records(d, "takeover")
    assert [(r["agent"], r["principal"], r["proof"]) for r in takeovers] == [
        ("alice/svc", "alice", "key")]


def test_keys_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    keygen(tmp_path, "k")
    r = subprocess.run([sys.executable, "-m", "mabeamd.ctl.main", "keys", "generate", "k",
                        "--dir", str(tmp_path)], capture_output=True, text=True, check=False)
    assert r.returncode == 1 and "exists" in r.stderr
    public, secret = zmq.auth.load_certificate(tmp_path / "k.key_secret")
    assert len(public) == 40 and secret is not None and len(secret) == 40
