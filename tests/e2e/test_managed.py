"""Managed agents: launched with credentials, logged, restarted by policy, driven by ctl."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator

import pytest

from mabeamd.client import Client
from mabeamd.testing import Daemon

ECHO = f"""
[managed.echo]
cmd = "{sys.executable}"
args = ["-m", "mabeamd.client.example"]
numprocesses = 2
backoff_initial = 0.05
"""


@pytest.fixture
def managed(make_daemon: Callable[..., Daemon]) -> Iterator[Daemon]:
    d = make_daemon(ECHO).start()
    yield d


def programs(d: Daemon) -> dict[str, dict[str, object]]:
    return {p["agent"]: p for prog in d.call("managed.list")["programs"]
            for p in prog["processes"]}


def registered(c: Client, *ids: str) -> bool:
    found = {a["id"]: a for a in c.list_agents(prefix="echo/", status="any")["agents"]}
    return all(i in found and found[i]["status"] == "healthy" for i in ids)


def test_managed_agents_register_and_answer(managed: Daemon) -> None:
    with Client(managed.agent_endpoint) as c:
        agents = c.wait_for(2, timeout=10, capabilities=["echo"])
        assert [a["id"] for a in agents] == ["echo/0", "echo/1"]
        assert all(a["managed"] == "echo" for a in agents)
        c.register("tester")
        c.send("tester", "echo/1", {"ping": 1}, topic="echo")
        push = c.next_push(5)
        assert push.body["from"] == "echo/1" and push.body["topic"] == "echoed"
        assert push.body["body"] == {"ping": 1}
    # Their output is in the daemon's log, tagged with the agent id.
    managed.wait_until(lambda: "[echo/0] INFO echo/0 registered" in managed.log(),
                       what="managed output in the log")


def test_killed_managed_agent_is_restarted_and_takes_its_id_back(managed: Daemon) -> None:
    with Client(managed.agent_endpoint) as c:
        c.wait_for(2, timeout=10, capabilities=["echo"])
        before = programs(managed)["echo/0"]
        os.kill(before["pid"], signal.SIGKILL)  # type: ignore[arg-type]
        managed.wait_until(lambda: programs(managed)["echo/0"]["pid"] not in
                           (None, before["pid"]) and programs(managed)["echo/0"]["state"]
                           == "running", what="echo/0 restarted")
        after = programs(managed)["echo/0"]
        assert after["restarts"] == 1 and after["last_exit"] == "killed by SIGKILL"
        # The new process re-registers at once with the daemon-issued token: no "exists".
        managed.wait_until(lambda: registered(c, "echo/0", "echo/1"), what="re-registered")
    assert "Exists" not in managed.log()


def test_ctl_stop_start_restart_scale(managed: Daemon) -> None:
    sock = ["--socket", str(managed.socket)]
    r = managed.ctl("agents", "stop", "echo", *sock)
    assert r.returncode == 0, r.stderr
    assert {p["state"] for p in programs(managed).values()} == {"stopped"}
    with Client(managed.agent_endpoint) as c:
        # Stopped with SIGTERM, the example agents said bye.
        managed.wait_until(lambda: c.list_agents(prefix="echo/", status="any")["agents"] == [],
                           what="agents gone after stop")
        r = managed.ctl("agents", "start", "echo", *sock)
        assert r.returncode == 0, r.stderr
        c.wait_for(2, timeout=10, capabilities=["echo"])
        r = managed.ctl("agents", "scale", "echo", "3", "--json", *sock)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["numprocesses"] == 3
        c.wait_for(3, timeout=10, capabilities=["echo"])
        r = managed.ctl("agents", "scale", "echo", "1", *sock)
        assert r.returncode == 0
        assert list(programs(managed)) == ["echo/0"]
        pid = programs(managed)["echo/0"]["pid"]
        r = managed.ctl("agents", "restart", "echo", *sock)
        assert r.returncode == 0
        assert programs(managed)["echo/0"]["pid"] != pid
    r = managed.ctl("agents", "programs", *sock)
    assert "echo/0" in r.stdout and "running" in r.stdout
    r = managed.ctl("agents", "stop", "nosuch", *sock)
    assert r.returncode == 1 and "no managed program 'nosuch'" in r.stderr


def test_restart_policies(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon("""
[managed.once]
cmd = "/bin/sh"
args = ["-c", "echo done-once"]
restart = "on-failure"
[managed.never]
cmd = "/bin/sh"
args = ["-c", "exit 4"]
restart = "never"
[managed.flaky]
cmd = "/bin/sh"
args = ["-c", "exit 2"]
restart = "on-failure"
backoff_initial = 0.01
max_restarts = 2
""").start()
    d.wait_until(lambda: programs(d)["flaky/0"]["state"] == "failed", what="flaky FAILED")
    p = programs(d)
    assert p["once/0"]["state"] == "exited" and p["once/0"]["last_exit"] == "exit 0"
    assert p["never/0"]["state"] == "exited" and p["never/0"]["last_exit"] == "exit 4"
    assert p["flaky/0"]["restarts"] == 2
    assert "[once/0] done-once" in d.log()
    assert d.stop() == 0


def test_reload_adds_and_removes_programs(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(ECHO.replace("numprocesses = 2", "numprocesses = 1")).start()
    with Client(d.agent_endpoint) as c:
        c.wait_for(1, timeout=10, capabilities=["echo"])
        d.config_path.write_text(d.config_path.read_text().replace("[managed.echo]",
                                                                   "[managed.echo2]"))
        out = d.call("reload")
        assert "managed.echo" in out["changed"] and "managed.echo2" in out["changed"]
        assert list(programs(d)) == ["echo2/0"]
        c.wait_for(1, timeout=10, prefix="echo2/")
