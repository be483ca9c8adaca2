"""systemd integration: the unit file, sd_notify messages, journald logging, reload."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mabeamd.daemon.sdnotify import Notifier
from mabeamd.logsetup import JournalHandler, stderr_is_journal
from mabeamd.testing import ROOT, Daemon, short_tmpdir

UNIT = ROOT / "systemd" / "mabeamd.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at the installed console script and
    # change nothing else.
    exe = Path(sys.executable).parent / "mabeamd"
    assert exe.exists(), "mabeamd console script not installed"
    unit = tmp_path / "mabeamd.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/mabeamd", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr


def test_unit_declares_what_the_daemon_relies_on() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "KillMode=mixed", "RuntimeDirectory=mabeamd",
                 "StateDirectory=mabeamd", "ExecReload=/bin/kill -HUP $MAINPID",
                 "RestartPreventExitStatus=78", "WatchdogSec=", "NoNewPrivileges=yes",
                 "ProtectSystem=strict"):
        assert line in text
    assert (ROOT / "systemd" / "mabeamd.sysusers").read_text().startswith("#")


def test_notify_sequence_ready_reload_stop(daemon: Daemon) -> None:
    n = daemon.notify
    assert n is not None
    ready = n.wait_for(lambda m: m.get("READY") == "1")
    assert ready["STATUS"] == "2/2 workers running"
    assert ready["MAINPID"] == str(daemon.pid)

    start = len(n.messages)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.signal(signal.SIGHUP)
    reloading = n.wait_for(lambda m: m.get("RELOADING") == "1", start=start)
    usec = int(reloading["MONOTONIC_USEC"])
    assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.wait_for(lambda m: m.get("READY") == "1", start=start)

    start = len(n.messages)
    assert daemon.stop() == 0
    n.wait_for(lambda m: m.get("STOPPING") == "1", start=start)


def test_status_updates_when_a_worker_dies(daemon: Daemon) -> None:
    n = daemon.notify
    assert n is not None
    start = len(n.messages)
    os.kill(daemon.workers()[0]["pid"], signal.SIGKILL)
    n.wait_for(lambda m: m.get("STATUS") == "1/2 workers running", start=start)
    n.wait_for(lambda m: m.get("STATUS") == "2/2 workers running", start=start)


def test_watchdog_pings(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(env={"WATCHDOG_USEC": "200000"}).start()
    n = d.notify
    assert n is not None
    n.wait_for(lambda m: m.get("WATCHDOG") == "1")
    start = len(n.messages)
    n.wait_for(lambda m: m.get("WATCHDOG") == "1", start=start)


def test_watchdog_for_another_pid_is_ignored(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(env={"WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}).start()
    time.sleep(0.4)
    assert d.notify is not None
    assert not any("WATCHDOG" in m for m in d.notify.messages)


def test_workers_do_not_inherit_notify_socket(daemon: Daemon) -> None:
    import psutil

    for w in daemon.workers():
        assert "NOTIFY_SOCKET" not in psutil.Process(w["pid"]).environ()


def test_sighup_with_broken_config_keeps_the_old_one(daemon: Daemon) -> None:
    good = daemon.config_path.read_text()
    daemon.config_path.write_text(good + '\n[daemon]\nlog_level = "chatty"\n')
    pids = [w["pid"] for w in daemon.workers()]
    daemon.signal(signal.SIGHUP)
    daemon.wait_until(lambda: "reload (SIGHUP) refused" in daemon.log(), what="refusal logged")
    assert "log_level: expected one of" in daemon.log()
    s = daemon.call("status")
    assert s["log_level"] == "info"
    assert s["state"] == "running"
    assert [w["pid"] for w in daemon.workers()] == pids  # nothing restarted

    # The same through mabeamctl: refused, exit 1, reason shown.
    r = daemon.ctl("reload", "--socket", str(daemon.socket))
    assert r.returncode == 1
    assert "reload refused" in r.stderr and "chatty" in r.stderr


def test_sighup_applies_a_good_config_without_dropping_clients(daemon: Daemon) -> None:
    client = daemon.client()
    try:
        assert client.call("ping")["pong"]
        daemon.config_path.write_text(daemon.config_path.read_text().replace(
            "count = 2", "count = 3") + '\n[daemon]\nlog_level = "debug"\n')
        daemon.signal(signal.SIGHUP)
        daemon.wait_until(lambda: daemon.call("status")["log_level"] == "debug",
                          what="log level reloaded")
        # The level changes first; the reload's report is logged when the whole reload ends.
        daemon.wait_until(lambda: "workers.count changed but only take effect after a "
                          "restart" in daemon.log(), what="the reload's report")
        assert daemon.call("status")["workers"]["total"] == 2
        assert client.call("ping")["pong"]  # the same connection still works
    finally:
        client.close()
    out = daemon.call("reload")
    assert out["changed"] == []
    assert out["restart_required"] == ["workers.count"]


# --- unit level: the pure-Python notify and journal fallbacks ---------------------------------


def test_builtin_notifier_abstract_and_path(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"mabeamd-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    n = Notifier()
    assert n.backend == "builtin"
    assert n.notify(READY=1, STATUS="ok")
    assert s.recv(1024) == b"READY=1\nSTATUS=ok"
    n.close()
    s.close()

    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier().notify(READY=1)


def test_a_notify_socket_nobody_reads_never_blocks_the_sender(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The arbiter once hung 70 s in sendto() on a full notify socket. Sends never block: a
    status update that cannot go is dropped and counted; a state change (READY, STOPPING)
    is kept and goes first once the queue drains."""
    import threading

    name = f"mabeamd-test-full-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    n = Notifier()
    done = threading.Event()

    def fill() -> None:
        sent = 0
        while n.status(f"update {sent}"):  # until the receiver's queue is full
            sent += 1
        n.stopping()  # cannot go now: kept
        for i in range(100):
            n.status(f"late {i}")  # dropped, not blocking
        done.set()

    t = threading.Thread(target=fill, daemon=True)
    t.start()
    assert done.wait(10), "a send blocked on the full notify socket"
    assert n.dropped >= 100
    s.setblocking(False)
    got = []
    with contextlib.suppress(BlockingIOError):
        while True:
            got.append(s.recv(1024))
    assert b"STOPPING=1" not in got  # not sent while the queue was full
    assert n.flush()  # the queue has room again: the kept state change goes
    assert s.recv(1024) == b"STOPPING=1"
    n.close()
    s.close()


def test_journal_handler_speaks_the_native_protocol() -> None:
    d = short_tmpdir()
    path = d / "journal.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    h = JournalHandler("mabeamd-test", str(path))
    rec = logging.LogRecord("mabeamd.x", logging.WARNING, __file__, 7, "two\nlines", None, None)
    h.emit(rec)
    data = server.recv(65536)
    h.close()
    server.close()
    shutil.rmtree(d)
    assert b"PRIORITY=4\n" in data
    assert b"SYSLOG_IDENTIFIER=mabeamd-test\n" in data
    assert b"MESSAGE\n" + struct.pack("<Q", len(b"two\nlines")) + b"two\nlines\n" in data


def test_stderr_is_journal_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert not stderr_is_journal()
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not stderr_is_journal()


# --- the unit's hardening, checked against the real daemon where this machine allows ---------


def test_documentation_paths_are_installed_by_the_documented_steps() -> None:
    """Every file:// Documentation= of the unit is a file of the repository that the install
    steps of docs/operations.md copy to exactly that path."""
    install = (ROOT / "docs" / "operations.md").read_text().split("## Install", 1)[1]
    install = install.split("\n## ", 1)[0]
    docs = [w for line in UNIT.read_text().splitlines() if line.startswith("Documentation=")
            for w in line.split("=", 1)[1].split()]
    assert docs
    for url in docs:
        if not url.startswith("file://"):
            continue
        target = url[len("file://"):]
        steps = [line.split() for line in install.splitlines() if target in line.split()]
        assert steps, f"no install step puts anything at {target}"
        source = next(w for w in steps[0] if (ROOT / w).is_file())
        assert Path(target).name == Path(source).name


def unit_syscall_filter() -> list[str]:
    return [line.split("=", 1)[1].strip() for line in UNIT.read_text().splitlines()
            if line.startswith("SystemCallFilter=")]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_security_exposure_stays_low(tmp_path: Path) -> None:
    unit = tmp_path / "mabeamd.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/mabeamd",
                                             str(Path(sys.executable).parent / "mabeamd")))
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                       capture_output=True, text=True, check=False)
    if "--offline" in r.stderr:
        pytest.skip("this systemd-analyze has no --offline")
    score = float(r.stdout.rsplit("exposure level for", 1)[1].split(":", 1)[1].split()[0])
    assert score <= 1.5, r.stdout  # 1.6 before the filter and PrivateMounts=; 1.5 with


SECCOMP_EXEC = r"""
import ctypes, errno, os, subprocess, sys
# The unit's SystemCallFilter= lines, applied as systemd does: the first allow list starts
# from @default, later ~ lines remove, later plain lines add back; the rest gets EPERM.
text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True,
                      text=True, check=True).stdout
groups, cur = {}, None
for line in text.splitlines():
    if line.startswith("@"):
        cur = groups.setdefault(line.strip(), [])
    elif line.strip() and not line.strip().startswith("#") and cur is not None:
        cur.append(line.strip())
def expand(name):
    return set().union(*(expand(m) for m in groups[name])) if name.startswith("@") else {name}
allowed = expand("@default")
for item in sys.argv[1].split("|"):
    names = set().union(*(expand(n) for n in item.lstrip("~").split()))
    allowed = allowed - names if item.startswith("~") else allowed | names
lib = ctypes.CDLL("libseccomp.so.2")
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = lib.seccomp_init(ctypes.c_uint32(0x00050000 | errno.EPERM))
for name in allowed:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:
        lib.seccomp_rule_add(ctx, 0x7FFF0000, nr, 0)
assert lib.seccomp_load(ctx) == 0
os.execv(sys.argv[2], sys.argv[2:])
"""


def _libseccomp() -> bool:
    import ctypes.util

    return ctypes.util.find_library("seccomp") is not None


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or not _libseccomp(),
                    reason="needs systemd-analyze and libseccomp")
def test_daemon_runs_under_the_units_system_call_filter(
        make_daemon: Callable[..., Daemon]) -> None:
    """The unit's filter with libseccomp (systemd itself cannot run here): a filter that
    took sched_setscheduler made libzmq abort at its first I/O thread."""
    d = make_daemon('[control]\ngroup = "root"\n')  # chown of the control socket: @chown
    inner = d.command()
    d.command = lambda: [sys.executable, "-c", SECCOMP_EXEC,  # type: ignore[method-assign]
                         "|".join(unit_syscall_filter()), *inner]
    d.start()
    assert [w["state"] for w in d.workers()] == ["running", "running"]
    assert d.call("status")["state"] == "running"
    assert d.stop() == 0
