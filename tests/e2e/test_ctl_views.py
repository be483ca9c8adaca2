"""mabeamctl's live views against a real daemon: `events` (topics, --json, --count,
--timeout, missed events, Ctrl-C, no or CURVE-only endpoints) and `top` (one frame, rates
from counters, and the live screen in a pseudo-terminal, quit with q or Ctrl-C)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mabeamd.ctl import top
from mabeamd.testing import ENDPOINTS, Daemon, run_ctl, short_tmpdir


class Tail:
    """A `mabeamctl` run in the background whose output lines are collected as they come."""

    def __init__(self, daemon: Daemon, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mabeamd.ctl.main", *args, "--socket", str(daemon.socket)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line.rstrip("\n"))

    def wait_for(self, pred: Callable[[], bool], what: str, poke: Callable[[], None] | None = None,
                 timeout: float = 20.0) -> None:
        """Until pred(); `poke` (e.g. one more write) runs between looks, for output that
        needs the subscription to have reached the daemon first (ZeroMQ says nothing when
        it has)."""
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{what}: out={self.out} err={self.err} "
                                     f"rc={self.proc.poll()}")
            if poke is not None:
                poke()
            time.sleep(0.05)

    def finish(self, timeout: float = 20.0) -> int:
        rc = self.proc.wait(timeout)
        time.sleep(0.1)  # let the reader threads take the last lines
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def setter(daemon: Daemon, name: str) -> Callable[[], None]:
    n = iter(range(1, 1 << 30))

    def poke() -> None:
        daemon.call("vars.set", {"name": name, "value": next(n)})
    return poke


def test_events_follow_only_their_topics_as_json(daemon: Daemon) -> None:
    daemon.call("vars.create", {"name": "cfg/a", "value": 0})
    daemon.call("vars.create", {"name": "other/b", "value": 0})
    t = Tail(daemon, "events", "var.cfg/", "worker.", "--json")
    try:
        poke_other, poke_cfg = setter(daemon, "other/b"), setter(daemon, "cfg/a")
        t.wait_for(lambda: bool(t.out), "a first event",
                   poke=lambda: (poke_other(), poke_cfg()))
        daemon.call("workers.restart", {"index": 1})  # worker.stopped, ..., worker.running
        t.wait_for(lambda: any('"worker.running"' in line for line in t.out), "worker events")
        t.proc.send_signal(signal.SIGINT)
        assert t.finish() == 0, t.err
    finally:
        t.stop()
    events = [json.loads(line) for line in t.out]
    topics = [e["topic"] for e in events]
    assert all(x == "var.cfg/a" or x.startswith("worker.") for x in topics), topics
    assert "worker.stopped" in topics and "var.cfg/a" in topics, topics
    for e in events:
        assert isinstance(e["seq"], int) and isinstance(e["family_seq"], int)
    # Each family is seen whole ("worker."), or not at all for gaps ("var.cfg/"): no line
    # claims a missed event although other/b's events went by.
    assert not any("missed" in e for e in events), events
    assert "Traceback" not in "\n".join(t.err)


def test_events_human_lines_and_ctrl_c_exits_0(daemon: Daemon) -> None:
    daemon.call("vars.create", {"name": "h/x", "value": 0})
    t = Tail(daemon, "events")
    try:
        t.wait_for(lambda: any("var.h/x" in line for line in t.out), "a var event",
                   poke=setter(daemon, "h/x"))
        daemon.call("vars.set", {"name": "h/x", "value": "v" * 100_000})
        t.wait_for(lambda: any("characters)" in line for line in t.out), "the big value")
        t.proc.send_signal(signal.SIGINT)
        assert t.finish() == 0
    finally:
        t.stop()
    line = next(x for x in t.out if "var.h/x" in x)
    assert re.match(r"\d\d:\d\d:\d\d\.\d{3} #\d+ var\.h/x name=h/x op=set version=\d+ by=@admin "
                    r"value=\d+$", line), line
    big = next(x for x in t.out if "characters)" in x)
    assert len(big) < 300, big  # a 100 KB value is cut in human output
    assert not any(x.startswith("---") for x in t.out), t.out  # every topic: no gap here
    assert "Traceback" not in "\n".join(t.err), t.err


def test_events_report_what_a_slow_subscriber_missed(make_daemon: Callable[..., Daemon],
                                                     ) -> None:
    # ENDPOINTS ends in the [events] table: a queue of one event per subscriber.
    d = make_daemon(ENDPOINTS + "hwm = 1\n").start()
    d.call("vars.create", {"name": "g/x", "value": 0})
    t = Tail(d, "events", "var.")
    try:
        t.wait_for(lambda: bool(t.out), "a first event", poke=setter(d, "g/x"))
        t.proc.send_signal(signal.SIGSTOP)  # the subscriber stops reading; ZeroMQ drops
        try:
            for i in range(40):  # 4 MB of events: far past the socket buffers and the hwm
                d.call("vars.set", {"name": "g/x", "value": f"{i}" + "x" * 100_000})
        finally:
            t.proc.send_signal(signal.SIGCONT)
        d.call("vars.create", {"name": "g/marker", "value": 1})
        t.wait_for(lambda: any("g/marker" in line for line in t.out), "the marker")
    finally:
        t.stop()
    missed = [m for line in t.out if (m := re.match(r"--- (\d+) events? missed \(var\.\*\)$",
                                                    line))]
    assert missed and sum(int(m.group(1)) for m in missed) > 0, t.out
    seen = sum(1 for line in t.out if " var.g/x " in line)
    # What was shown and what was missed add up to every write.
    assert seen + sum(int(m.group(1)) for m in missed) >= 40, t.out


def test_events_without_an_endpoint_or_keys(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(ENDPOINTS.replace('endpoint = "ipc://{run}/events.sock"', 'endpoint = ""'))
    d.start()
    r = run_ctl("events", "--socket", str(d.socket))
    assert r.returncode == 69 and "no event endpoint" in r.stderr, r
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def _keygen(directory: Path, name: str) -> None:
    r = run_ctl("keys", "generate", name, "--dir", str(directory))
    assert r.returncode == 0, r.stderr


def test_events_on_a_curve_endpoint(make_daemon: Callable[..., Daemon]) -> None:
    keys = short_tmpdir()
    allowed = keys / "authorized"
    allowed.mkdir()
    for name in ("server", "ops"):
        _keygen(keys, name)
    (allowed / "ops.key").write_text((keys / "ops.key").read_text())
    d = make_daemon(ENDPOINTS.replace('"ipc://{run}/events.sock"',
                                      '"curve+ipc://{run}/events.sock"') + f"""
[security]
server_key = "{keys / 'server.key_secret'}"
authorized_keys = "{allowed}"
""").start()
    r = run_ctl("events", "--socket", str(d.socket))
    assert r.returncode == 2 and "--key" in r.stderr and "--server-key" in r.stderr, r
    assert "Traceback" not in r.stderr
    r = run_ctl("events", "--socket", str(d.socket), "--key", str(keys / "nope.key_secret"),
                "--server-key", str(keys / "server.key"))
    assert r.returncode == 66 and "cannot read" in r.stderr, r
    d.call("vars.create", {"name": "k/x", "value": 0})
    t = Tail(d, "events", "var.k/", "--count", "1", "--key", str(keys / "ops.key_secret"),
             "--server-key", str(keys / "server.key"))
    try:
        t.wait_for(lambda: bool(t.out), "an event over CURVE", poke=setter(d, "k/x"))
        assert t.finish() == 0
    finally:
        t.stop()
    assert "var.k/x" in t.out[0]


def test_events_timeout_ends_a_quiet_tail(daemon: Daemon) -> None:
    r = run_ctl("events", "anomaly.", "--timeout", "0.5", "--socket", str(daemon.socket))
    assert r.returncode == 0 and r.stdout == "", r
    r = run_ctl("events", "anomaly.", "--count", "1", "--timeout", "0.5",
                "--socket", str(daemon.socket))
    assert r.returncode == 75 and "0 of 1 events" in r.stderr, r


# --- top -------------------------------------------------------------------------------------


def test_top_rates_are_differences_of_counters(daemon: Daemon) -> None:
    def wal_total() -> int:
        return sum((w.get("shard") or {}).get("wal_records", 0) for w in daemon.workers())

    daemon.wait_until(lambda: all(w.get("shard") for w in daemon.workers()),
                      what="the workers' first heartbeat figures")
    with daemon.client() as c:
        first = top.take(c)
        base = sum(w["shard"]["wal_records"] for w in first.workers.values())
        for i in range(20):
            c.call("vars.create", {"name": f"rate/{i}", "value": i})
        # Workers report their counters with each heartbeat: wait for the 20 writes.
        daemon.wait_until(lambda: wal_total() == base + 20, what="the writes' heartbeat")
        second = top.take(c)
    f = top.frame(second, first)
    dt = second.at - first.at
    assert round(sum(w["writes_per_s"] for w in f["workers"]) * dt) == 20, f
    assert f["rates"]["control_requests_per_s"] > 0
    assert f["busiest_shards"][0] in (0, 1) and len(f["busiest_shards"]) == 2
    assert f["agents"] == {"total": 0, "healthy": 0, "unhealthy": 0}


def test_top_once_and_not_a_terminal(daemon: Daemon) -> None:
    sock = ["--socket", str(daemon.socket)]
    r = run_ctl("top", "--once", "--interval", "0.2", *sock)
    assert r.returncode == 0, r.stderr
    for word in ("WORKER", "WRITES/s", "busiest shards", "PROTOCOL", "agents 0"):
        assert word in r.stdout, (word, r.stdout)
    r = run_ctl("top", "--once", "--json", "--interval", "0.2", *sock)
    f = json.loads(r.stdout)
    assert [w["state"] for w in f["workers"]] == ["running", "running"] and f["interval"] > 0
    r = run_ctl("top", *sock)  # stdout is a pipe here
    assert r.returncode == 2 and "not one" in r.stderr and "--once" in r.stderr, r
    assert "Traceback" not in r.stderr


def _read(fd: int, into: bytearray, until: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; screen so far: {bytes(into[-2000:])!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                into += os.read(fd, 65536)
            except OSError:  # EIO: the other side is closed
                return


@pytest.mark.parametrize("quit_key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_top_in_a_terminal_draws_refreshes_and_quits(daemon: Daemon, quit_key: bytes) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 140, 0, 0))
    before = termios.tcgetattr(slave)

    env = {**os.environ, "TERM": "xterm-256color"}
    # The pty's size is the screen's: COLUMNS/LINES inherited from whoever ran pytest (or
    # set by a plugin such as xdist's workers) would win over it in rich.
    for name in ("NO_COLOR", "COLUMNS", "LINES"):
        env.pop(name, None)
    # In its own session, the wrapper makes the pty its controlling terminal (so Ctrl-C on
    # it is SIGINT to top) and execs mabeamctl (no preexec_fn: this process has threads).
    wrapper = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
               "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    proc = subprocess.Popen(
        [sys.executable, "-c", wrapper, "-m", "mabeamd.ctl.main", "top", "--interval", "0.2",
         "--socket", str(daemon.socket)], stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True, env=env)
    screen = bytearray()
    try:
        # Each refresh draws the whole screen again: three titles = drawn and refreshed.
        _read(master, screen, lambda: screen.count(b"busiest shards") >= 3, 30)
        assert b"\x1b[?1049h" in screen  # the alternate screen
        assert b"WORKER" in screen and b"q quits" in screen
        os.write(master, quit_key)
        assert proc.wait(20) == 0
        _read(master, screen, lambda: b"\x1b[?1049l" in screen, 5)
        assert termios.tcgetattr(slave) == before  # cbreak undone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
        os.close(slave)
    assert b"\x1b[?25h" in screen  # the cursor is shown again
    assert b"Traceback" not in screen, bytes(screen[-2000:])
