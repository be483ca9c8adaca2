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

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mabeamd.client import AsyncClient, Client
from mabeamd.client.errors import NotFound, UnknownOp
from mabeamd.ctl.client import CommandFailed
from mabeamd.testing import FAST_WORKERS, Daemon, free_port
from tests.e2e.test_sessions import Scripted, run


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
    appends = sum(v for (n, _), v in m.items()
                  if n == "mabeamd_wal_append_duration_seconds_count")
    assert appends >= 20
    assert m[("mabeamd_events_dropped_total", ())] == 0
    assert m[("mabeamd_state", (("state", "running"),))] == 1
    assert ("mabeamd_build_info", (("version", d.call("status")["version"]),)) in m
    # no agent ids or variable names as labels
    for (_, labels) in m:
        for _, value in labels:
            assert not value.startswith(("m/", "m1")), labels


def test_requests_by_op_and_code_with_latency_on_every_endpoint(
        make_daemon: Callable[..., Daemon]) -> None:
    d, port = monitored(make_daemon, workers=1)
    with Client(d.agent_endpoint) as c:
        c.register("r1")
        for i in range(3):
            c.create_var("r1", f"r/{i}", i)  # the shard's own endpoint
        with pytest.raises(NotFound):
            c.get_var("r/missing", local=False)
        c.list_vars()  # the agent endpoint
        with pytest.raises(UnknownOp):
            c.request("no.such.op." + "x" * 40, {})  # counted as "other", not as itself
    d.call("status")
    with pytest.raises(CommandFailed):
        d.call("workers.restart", {"index": 7})

    def both(m: dict[Any, float], op: str, code: str) -> float:
        # The SDK sends a variable request to the shard's own endpoint once it knows it
        # (after hello), to the agent endpoint otherwise: together they saw each one.
        return (m.get(("mabeamd_shard_requests_total", (
            ("code", code), ("op", op), ("shard", "0"))), 0) + m.get((
                "mabeamd_requests_total", (("code", code), ("endpoint", "agent"),
                                           ("op", op))), 0))

    # The worker's next heartbeat carries its shard endpoint's figures.
    d.wait_until(lambda: both(samples(port), "var.create", "ok") == 3
                 and both(samples(port), "var.get", "not_found") == 1, timeout=15)
    m = samples(port)

    def count(name: str, **labels: str) -> float:
        return m.get((name, tuple(sorted(labels.items()))), 0)

    assert count("mabeamd_shard_requests_total", shard="0", op="var.create", code="ok") >= 1
    assert count("mabeamd_requests_total", endpoint="agent", op="hello", code="ok") == 1
    assert count("mabeamd_requests_total", endpoint="agent", op="var.list", code="ok") == 1
    assert count("mabeamd_requests_total", endpoint="agent", op="other",
                 code="unknown_op") == 1
    assert count("mabeamd_requests_total", endpoint="control", op="status", code="ok") >= 1
    assert count("mabeamd_requests_total", endpoint="control", op="workers.restart",
                 code="not_found") == 1
    # Histograms: +Inf equals the count, buckets never decrease, the sum is positive.
    for prefix, labels in (("mabeamd_shard_request_duration_seconds",
                            {"shard": "0", "op": "var.create"}),
                           ("mabeamd_request_duration_seconds",
                            {"endpoint": "agent", "op": "hello"})):
        buckets = sorted(((float(dict(lb)["le"]), v) for (n, lb), v in m.items()
                          if n == prefix + "_bucket"
                          and all((k, x) in lb for k, x in labels.items())))
        assert buckets and buckets[-1][0] == float("inf")
        values = [v for _, v in buckets]
        assert values == sorted(values)
        assert values[-1] == count(prefix + "_count", **labels) >= 1
        assert count(prefix + "_sum", **labels) > 0
    for (_, labels) in m:  # no variable names or made-up ops as labels
        assert not any(v.startswith(("r/", "no.such")) for _, v in labels), labels


def test_auction_revenue_clearing_prices_and_session_durations(
        make_daemon: Callable[..., Daemon]) -> None:
    d, port = monitored(make_daemon, workers=1)

    async def scenario(c: AsyncClient, agents: dict[str, Scripted]) -> None:
        for reserve in (12, 30):  # a sale at 20 (second price), then no sale
            end = await c.start_session("boss", "sealed_bid", participants=["a1", "a2"],
                                        params={"item": "lot", "reserve": reserve},
                                        deadline=10)
            assert end["state"] == "applied", end
        await c.start_session("boss", "consensus", participants=["a1"],
                              params={"proposal": 1}, deadline=0.2)

    run(d, {"a1": {"sealed_bid": lambda inv: {"bid": 15}},
            "a2": {"sealed_bid": lambda inv: {"bid": 25}}}, scenario)
    m = samples(port)
    sealed = (("protocol", "sealed_bid"),)
    assert m[("mabeamd_auction_revenue_total", sealed)] == 15  # a2 pays a1's bid
    assert m[("mabeamd_clearing_price_count", sealed)] == 1
    assert m[("mabeamd_clearing_price_sum", sealed)] == 15
    assert m[("mabeamd_clearing_price_last", sealed)] == 15
    assert ("mabeamd_auction_revenue_total", (("protocol", "consensus"),)) not in m
    assert m[("mabeamd_session_duration_seconds_count", sealed)] == 2
    assert m[("mabeamd_session_duration_seconds_count", (("protocol", "consensus"),))] == 1
    assert m[("mabeamd_session_duration_seconds_sum", sealed)] > 0


def test_readyz_follows_the_workers_and_healthz_stays_up(
        make_daemon: Callable[..., Daemon]) -> None:
    # A hung worker is killed and restarted after a 3 s back-off: a not-ready window long
    # enough to look at from here on a loaded machine (the default 0.05 s was not).
    port = free_port()
    d = make_daemon(FAST_WORKERS.format(workers=2, max_restarts=5)
                    .replace("backoff_initial = 0.05", "backoff_initial = 3.0")
                    .replace("backoff_max = 0.5", "backoff_max = 3.0")
                    + f'[metrics]\nlisten = "127.0.0.1:{port}"\n', raw_config=True)
    d.start()
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
        if len(junk) > 8192:  # a head over the listener's 8 KiB: said so, then closed
            assert reply.startswith(b"HTTP/1.1 431"), reply[:80]
        else:
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


def test_the_grafana_dashboard_queries_only_exported_metrics(
        make_daemon: Callable[..., Daemon]) -> None:
    """etc/grafana/mabeamd-dashboard.json: every metric a query names is one the daemon
    exports (a renamed metric would leave an empty panel nobody notices)."""
    import re

    from mabeamd.testing import ROOT

    _, port = monitored(make_daemon, workers=1)
    status, _, body = get(port, "/metrics")
    assert status == 200
    exported: set[str] = set()
    for fam in text_string_to_metric_families(body.decode()):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                    "summary": ["_sum", "_count"], "info": ["_info"]}.get(fam.type, [""])
        exported |= {fam.name + s for s in suffixes}
    dashboard = json.loads((ROOT / "etc" / "grafana" / "mabeamd-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    named = {m for e in exprs for m in re.findall(r"\bmabeamd_[a-z0-9_]+", e)}
    assert named and not named - exported, sorted(named - exported)
    # Every panel asks the chosen data source and instance.
    for e in exprs:
        assert 'instance=~"$instance"' in e, e
    titles = [p["title"] for p in dashboard["panels"]]
    assert len(titles) == len(set(titles))
