"""The monitoring listener of a real daemon: /metrics parsed with prometheus_client's own
parser, /healthz and /readyz through a worker kill, bad requests, a taken port."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mabeamd.client import Client
from mabeamd.testing import Daemon, free_port


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read()
    finally:
        conn.close()


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, ctype, body = get(port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def monitored(make_daemon: Callable[..., Daemon], workers: int = 2) -> tuple[Daemon, int]:
    port = free_port()
    d = make_daemon(f'[metrics]\nlisten = "127.0.0.1:{port}"\n', workers=workers)
    d.start()
    return d, port


def test_metrics_show_workers_agents_writes_and_sessions(
        make_daemon: Callable[..., Daemon]) -> None:
    d, port = monitored(make_daemon)
    with Client(d.agent_endpoint) as c:
        c.register("m1", capabilities=["vote"])
        for i in range(20):
            c.create_var("m1", f"m/{i}", i)
        ended = c.start_session("m1", "consensus", participants=["m1"],
                                params={"proposal": 1}, deadline=0.3, wait=True)
        outcome = ended["state"]
        d.wait_until(lambda: samples(port).get(
            ("mabeamd_shard_variables", (("shard", "0"),)), 0) + samples(port).get(
            ("mabeamd_shard_variables", (("shard", "1"),)), 0) == 20, timeout=15)
        m = samples(port)
    assert m[("mabeamd_workers", (("state", "running"),))] == 2
    assert m[("mabeamd_worker_up", (("worker", "0"),))] == 1
    assert m[("mabeamd_worker_resident_memory_bytes", (("worker", "1"),))] > 1 << 20
    assert m[("mabeamd_agents", (("status", "healthy"),))] == 1
    assert m[("mabeamd_sessions_started_total", ())] == 1
    assert m[("mabeamd_sessions_ended_total", (("outcome", outcome),
                                               ("protocol", "consensus")))] == 1
    assert m[("mabeamd_agent_endpoint_messages_total", (("kind", "requests"),))] >= 2
    records = sum(v for (n, _), v in m.items() if n == "mabeamd_wal_records_total")
    assert records >= 20
    assert m[("mabeamd_state", (("state", "running"),))] == 1
    assert ("mabeamd_build_info", (("version", d.call("status")["version"]),)) in m
    # no agent ids or variable names as labels
    for (_, labels) in m:
        for _, value in labels:
            assert not value.startswith(("m/", "m1")), labels


def test_readyz_follows_the_workers_and_healthz_stays_up(
        make_daemon: Callable[..., Daemon]) -> None:
    d, port = monitored(make_daemon)
    status, ctype, body = get(port, "/readyz")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body) == {"ready": True, "state": "running", "reasons": []}
    pid = d.workers()[1]["pid"]
    os.kill(pid, signal.SIGSTOP)  # silent, so it is killed as hung and restarted
    try:
        d.wait_until(lambda: get(port, "/readyz")[0] == 503, timeout=15)
        not_ready = json.loads(get(port, "/readyz")[2])
        assert not_ready["ready"] is False
        assert any("worker 1" in r for r in not_ready["reasons"]), not_ready
        assert get(port, "/healthz")[0] == 200
        r = d.ctl("status", "--socket", str(d.socket))
        assert r.returncode == 3 and "not ready: worker 1" in r.stderr, (r.returncode,
                                                                        r.stderr)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    d.wait_until(lambda: get(port, "/readyz")[0] == 200, timeout=20)
    r = d.ctl("status", "--socket", str(d.socket))
    assert r.returncode == 0, r.stderr
    restarts = samples(port)[("mabeamd_worker_restarts_total", (("worker", "1"),))]
    assert restarts >= 1


def test_bad_requests_get_http_errors_and_the_daemon_carries_on(
        make_daemon: Callable[..., Daemon]) -> None:
    d, port = monitored(make_daemon, workers=1)
    assert get(port, "/nope")[0] == 404
    assert get(port, "/metrics", "POST")[0] == 405
    status, _, body = get(port, "/readyz", "HEAD")
    assert status == 200 and body == b""
    for junk in (b"\x00\xff garbage\r\n\r\n", b"GET /metrics\r\n\r\n",
                 b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply == b"" or reply.startswith(b"HTTP/1.1 400"), reply[:80]
    # A client that connects and says nothing does not hold anything up.
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        assert get(port, "/healthz")[0] == 200
    finally:
        idle.close()
    assert d.call("status")["state"] == "running"


def test_a_taken_port_is_logged_and_the_daemon_serves_without_metrics(
        make_daemon: Callable[..., Daemon]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = make_daemon(f'[metrics]\nlisten = "127.0.0.1:{port}"\n', workers=1)
        d.start()
        st: dict[str, Any] = d.call("status")
        assert st["state"] == "running"
        assert "cannot listen" in (st["metrics"]["error"] or ""), st["metrics"]
        assert "[metrics] listen" in d.log()


def test_metrics_listen_is_validated(make_daemon: Callable[..., Daemon]) -> None:
    for bad, expected in (('"example.com:80"', "expected HOST:PORT"),
                          ('"127.0.0.1:0"', "expected HOST:PORT"),
                          ('"10.1.2.3:9750"', "is not on loopback")):
        d = make_daemon(f"[metrics]\nlisten = {bad}\n", workers=1)
        r = subprocess.run([*d.command(), "--check-config"], capture_output=True,
                           text=True, check=False)
        assert r.returncode == 78, (bad, r.stdout, r.stderr)
        assert expected in r.stderr, (bad, r.stderr)


def test_ctl_ping_and_a_closed_pipe(daemon: Daemon) -> None:
    r = daemon.ctl("ping", "--socket", str(daemon.socket))
    assert r.returncode == 0 and r.stdout.startswith("pong from mabeamd in "), r
    out = json.loads(daemon.ctl("ping", "--json", "--socket", str(daemon.socket)).stdout)
    assert out["pong"] is True and out["round_trip_ms"] > 0
    # `mabeamctl ... | head -1`: the reader goes before mabeamctl writes.
    import sys
    p = subprocess.Popen([sys.executable, "-m", "mabeamd.ctl.main", "status", "--json",
                          "--socket", str(daemon.socket)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(30) == 0 and "Traceback" not in err, err
