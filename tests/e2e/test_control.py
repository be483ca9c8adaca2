"""The control socket and mabeamctl, against a real daemon."""

from __future__ import annotations

import grp
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import zmq

from mabeamd.net import wire
from mabeamd.testing import Daemon, short_tmpdir


def test_control_socket_is_owner_only(daemon: Daemon) -> None:
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(daemon.run_dir).st_mode) == 0o700


def test_control_socket_group_mode(make_daemon: Callable[..., Daemon]) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    d = make_daemon(f'\n[control]\ngroup = "{group}"\n').start()
    st = os.stat(d.socket)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == os.getgid()


@pytest.mark.parametrize("command", ["status", "workers", "plugins", "version"])
def test_every_read_command_has_a_table_and_json(daemon: Daemon, command: str) -> None:
    r = daemon.ctl(command, "--socket", str(daemon.socket))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    j = daemon.ctl("--json", command, "--socket", str(daemon.socket))
    assert j.returncode == 0, j.stderr
    json.loads(j.stdout)


def test_status_content(daemon: Daemon) -> None:
    s = daemon.call("status")
    assert s["pid"] == daemon.pid
    assert s["state"] == "running"
    assert s["workers"] == {"total": 2, "running": 2, "starting": 0, "backoff": 0,
                            "stopping": 0, "stopped": 0, "failed": 0}
    assert s["control_socket"] == str(daemon.socket)
    assert s["systemd_notify"] is True
    assert s["ready_after"] > 0
    text = daemon.ctl("status", "--socket", str(daemon.socket)).stdout
    assert f"(pid {daemon.pid}) running: 2/2 workers running" in text


def test_socket_from_env_and_from_config(daemon: Daemon, tmp_path: Path) -> None:
    r = daemon.ctl("status", env={"MABEAM_SOCKET": str(daemon.socket)})
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\nruntime_dir = "{daemon.run_dir}"\n')
    r = daemon.ctl("--config", str(cfg), "workers")
    assert r.returncode == 0, r.stderr
    assert "running" in r.stdout


def test_ctl_when_daemon_not_running(tmp_path: Path) -> None:
    d = Daemon()
    try:
        r = d.ctl("status", "--socket", str(tmp_path / "none.sock"))
        assert r.returncode == 69
        assert r.stderr.strip() == (f"mabeamctl: mabeamd is not running (no control socket at "
                                    f"{tmp_path / 'none.sock'})")
        # A stale socket file left by a crashed daemon.
        stale = short_tmpdir() / "stale.sock"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(stale))
        s.close()
        r = d.ctl("status", "--socket", str(stale))
        assert r.returncode == 69
        assert "stale control socket" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        d.cleanup()


def test_ctl_usage_errors(daemon: Daemon) -> None:
    r = daemon.ctl("workers", "restart", "--socket", str(daemon.socket))
    assert r.returncode == 2
    r = daemon.ctl("workers", "restart", "one", "--socket", str(daemon.socket))
    assert r.returncode == 2
    assert "number or 'all'" in r.stderr
    r = daemon.ctl("frobnicate")
    assert r.returncode == 2
    r = daemon.ctl("workers", "restart", "9", "--socket", str(daemon.socket))
    assert r.returncode == 1
    assert "no worker 9" in r.stderr


def test_ctl_stop_waits_for_exit(daemon: Daemon) -> None:
    r = daemon.ctl("stop", "--socket", str(daemon.socket))
    assert r.returncode == 0, r.stderr
    assert f"mabeamd (pid {daemon.pid}) stopped" in r.stdout
    assert "stopping mabeamd" in r.stderr  # progress
    assert daemon.wait(5) == 0
    assert not daemon.socket.exists()


def raw(daemon: Daemon, frames: list[bytes]) -> list[bytes] | None:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"ipc://{daemon.socket}")
    try:
        s.send_multipart(frames)
        if s.poll(3000):
            return s.recv_multipart()
        return None
    finally:
        s.close()


@pytest.mark.parametrize("frames, code", [
    ([b"garbage"], "bad_request"),
    ([b"MB2", wire.pack({"id": 1, "op": "status"}), wire.pack({})], "unsupported_version"),
    ([wire.PROTOCOL, b"\xc1", wire.pack({})], "bad_request"),
    ([wire.PROTOCOL, wire.pack([1, 2]), wire.pack({})], "bad_request"),
    ([wire.PROTOCOL, wire.pack({"id": 1, "op": "nope"}), wire.pack({})], "unknown_op"),
    ([wire.PROTOCOL, wire.pack({"id": 1, "op": "status"}), wire.pack([1])], "bad_request"),
    ([wire.PROTOCOL, wire.pack({"id": 1, "op": "status"}), wire.pack({"x": 1})], "bad_request"),
    ([wire.PROTOCOL, wire.pack({"id": 1.5, "op": "status"}), wire.pack({})], "bad_request"),
    ([wire.PROTOCOL, wire.pack({"id": 1, "op": 5}), wire.pack({})], "bad_request"),
    ([wire.PROTOCOL, wire.pack({"id": 1, "op": "status"}), wire.pack({}) + b"\x00"],
     "bad_request"),
    ([wire.PROTOCOL, msgpack.packb({1: 2}), wire.pack({})], "bad_request"),
])
def test_malformed_requests_get_clear_errors(daemon: Daemon, frames: list[bytes],
                                             code: str) -> None:
    reply = raw(daemon, frames)
    assert reply is not None
    header, body = wire.decode(reply)
    assert header["status"] == "error"
    assert body["code"] == code
    assert body["message"]
    # The daemon is unaffected.
    assert daemon.call("ping")["pong"] is True
    assert daemon.call("status")["control"]["errors"] >= 1


def test_oversized_request_is_dropped_and_daemon_survives(daemon: Daemon) -> None:
    big = wire.PROTOCOL, wire.pack({"id": 1, "op": "status"}), b"\x00" * (2 << 20)
    assert raw(daemon, list(big)) is None  # MAXMSGSIZE: the connection is cut, no reply
    assert daemon.call("ping")["pong"] is True


def test_many_concurrent_clients(daemon: Daemon) -> None:
    clients = [daemon.client() for _ in range(20)]
    try:
        for _ in range(5):
            for c in clients:
                assert c.call("ping")["pong"] is True
    finally:
        for c in clients:
            c.close()


def test_status_answers_while_a_restart_is_in_progress(daemon: Daemon) -> None:
    """No global command lock: a long op does not hold up the others."""
    import threading

    done = threading.Event()

    def restart() -> None:
        daemon.call("workers.restart", {"index": "all"})
        done.set()

    t = threading.Thread(target=restart)
    t.start()
    answered_during = 0
    while not done.is_set():
        daemon.call("status", timeout=2)
        answered_during += 1
    t.join()
    assert answered_during >= 1
