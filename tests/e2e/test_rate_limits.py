"""Rate limits ([limits]) against a real daemon: the burst, then rate_limited with
retry_after, accepted again after waiting it; bytes/s; one agent's bucket across two
connections; a refusal changes nothing; reload; config validation; and a flood from one
agent refused while the others are served (how much slower they get: scripts/bench's
"rate-limit isolation" row)."""

from __future__ import annotations

import statistics
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from mabeamd import config as configmod
from mabeamd.client import Client, RateLimited
from mabeamd.config import ConfigError
from mabeamd.net import wire
from mabeamd.storage.sharding import shard_of
from mabeamd.testing import ENDPOINTS, ROOT, Daemon, free_port

sys.path.insert(0, str(ROOT / "scripts"))
from benchkit.flooder import flooding  # scripts/benchkit: the flooder the bench row uses too


class Wire:
    """A bare wire client: one DEALER per address (each one connection to the daemon)."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.socks: list[zmq.Socket[Any]] = []
        self.rid = 0

    def sock(self, endpoint: str) -> zmq.Socket[Any]:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 10000)
        s.connect(endpoint)
        self.socks.append(s)
        return s

    def call(self, sock: zmq.Socket[Any], op: str, body: Any) -> tuple[str, Any]:
        self.rid += 1
        sock.send_multipart(wire.encode({"id": self.rid, "op": op}, body))
        while True:
            _, header, reply = sock.recv_multipart()
            h = wire.unpack(header)
            if "push" not in h:  # a message pushed to the connection is not the reply
                break
        assert h["id"] == self.rid
        return h["status"], wire.unpack(reply)

    def ok(self, sock: zmq.Socket[Any], op: str, body: Any) -> Any:
        status, reply = self.call(sock, op, body)
        assert status == "ok", reply
        return reply

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.ctx.term()


@pytest.fixture
def bare() -> Iterator[Wire]:
    w = Wire()
    yield w
    w.close()


def until_refused(w: Wire, sock: zmq.Socket[Any], op: str, body: Callable[[int], Any],
                  most: int) -> tuple[int, dict[str, Any]]:
    """Send until the first refusal: (requests admitted before it, its error body)."""
    for i in range(most):
        status, reply = w.call(sock, op, body(i))
        if status == "error":
            assert reply["code"] == "rate_limited", reply
            return i, reply
    raise AssertionError(f"{most} requests and no rate_limited")


def retried(w: Wire, sock: zmq.Socket[Any], op: str, body: Any, err: dict[str, Any]) -> Any:
    """Wait the refusal's retry_after (the protocol's own condition), then the same request
    must be admitted: nothing else charges the bucket meanwhile."""
    time.sleep(err["retry_after"])
    return w.ok(sock, op, body)


def with_limits(limits: str, agents: str = "") -> str:
    """testing.ENDPOINTS (sockets in the daemon's own directory) plus these sections."""
    return ENDPOINTS.replace("[agents]\n", f"[agents]\n{agents}") + f"[limits]\n{limits}\n"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def test_burst_then_rate_limited_with_retry_after_then_admitted(
        make_daemon: Callable[..., Daemon], bare: Wire) -> None:
    port = free_port()
    d = make_daemon(with_limits("connection_requests = 4.0\nconnection_requests_burst = 8")
                    + f'[metrics]\nlisten = "127.0.0.1:{port}"\n').start()
    s = bare.sock(d.agent_endpoint)
    t0 = time.monotonic()
    admitted, err = until_refused(bare, s, "ping", lambda i: {}, 100)
    # The burst, plus what refilled while they were sent (4/s), and nothing more.
    assert 8 <= admitted <= 8 + 4 * (time.monotonic() - t0) + 1
    assert isinstance(err["retry_after"], float) and 0 < err["retry_after"] <= 0.251
    assert err["limit"] == "connection_requests"
    assert retried(bare, s, "ping", {}, err)["pong"] is True
    # Another connection has its own bucket.
    assert bare.ok(bare.sock(d.agent_endpoint), "ping", {})["pong"] is True
    # Counted: status (mabeamctl status) and the Prometheus counter.
    traffic = d.call("status")["agent_traffic"]
    assert traffic["rate_limited"] >= 1
    assert f'mabeamd_agent_endpoint_messages_total{{kind="rate_limited"}} ' \
           f'{float(traffic["rate_limited"])}' in scrape(port)
    shown = d.ctl("--socket", str(d.socket), "status")
    assert "rate_limited" in shown.stdout and "(limits on)" in shown.stdout, shown.stdout


def test_sdk_raises_rate_limited_with_retry_after(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(with_limits("agent_requests = 2.0\nagent_requests_burst = 3")).start()
    with Client(d.agent_endpoint, direct=False) as c:
        c.register("sdk-1")
        c.create_var("sdk-1", "sdk/x", 0)  # 1 of sdk-1's 3
        c.set_var("sdk-1", "sdk/x", 1)
        c.set_var("sdk-1", "sdk/x", 2)
        with pytest.raises(RateLimited) as caught:
            for i in range(3, 20):
                c.set_var("sdk-1", "sdk/x", i)
        exc = caught.value
        assert exc.code == "rate_limited" and exc.limit == "agent_requests"
        assert 0 < exc.retry_after <= 0.501
        assert c.get_var("sdk/x", local=False)["value"] == 2  # reads name no agent
        time.sleep(exc.retry_after)
        assert c.set_var("sdk-1", "sdk/x", 99)["version"] == 4


def test_bytes_per_second(make_daemon: Callable[..., Daemon], bare: Wire) -> None:
    # Small frames so the burst can be small: it must hold one request of max_message.
    d = make_daemon(with_limits("connection_bytes = 100000.0\nconnection_bytes_burst = "
                                "200000", agents="max_message = 100000\n")
                    + "[variables]\nmax_value = 34464\n").start()
    s = bare.sock(d.agent_endpoint)
    bare.ok(s, "hello", {"agent": "big"})
    value = b"x" * 30000
    t0 = time.monotonic()
    admitted, err = until_refused(
        bare, s, "var.create", lambda i: {"agent": "big", "name": f"b/{i}", "value": value}, 50)
    elapsed = time.monotonic() - t0
    # ~30 KB each: the 200 KB burst holds 6 of them (plus the hello), then 100 KB/s.
    assert 5 <= admitted <= 6 + (100000 * elapsed) / 30000 + 1
    assert err["limit"] == "connection_bytes"
    assert 0 < err["retry_after"] <= 0.31
    # Small requests still fit where a big one does not.
    bare.ok(s, "ping", {})
    retried(bare, s, "var.create", {"agent": "big", "name": "b/last", "value": value}, err)


def test_one_agents_bucket_spans_its_connections_and_refusals_change_nothing(
        make_daemon: Callable[..., Daemon], bare: Wire) -> None:
    d = make_daemon(with_limits("agent_requests = 2.0\nagent_requests_burst = 6")).start()
    a = bare.sock(d.agent_endpoint)
    hello = bare.ok(a, "hello", {"agent": "alice"})
    bob = bare.ok(a, "hello", {"agent": "bob"})  # the same connection, another agent
    name = "shared/x"
    bare.ok(a, "var.create", {"agent": "alice", "name": name, "value": 0})
    # Two connections to the shard's own endpoint, both speaking for alice: one bucket
    # there (each endpoint counts on its own: the agent endpoint's is another).
    eps = hello["shard_endpoints"]
    shard = eps[shard_of(name, len(eps))]
    conns = [bare.sock(shard), bare.sock(shard)]
    cred = hello["credential"]

    def write(i: int) -> dict[str, Any]:
        return {"agent": "alice", "credential": cred, "name": name, "value": i + 1}

    t0 = time.monotonic()
    admitted = 0
    while True:  # alternate the two connections until alice's bucket is spent
        status, reply = bare.call(conns[admitted % 2], "var.set", write(admitted))
        if status == "error":
            break
        admitted += 1
        assert admitted < 50
    assert reply["code"] == "rate_limited" and reply["limit"] == "agent_requests", reply
    assert 6 <= admitted <= 6 + 2 * (time.monotonic() - t0) + 1
    # Refused on the other connection too, and the refusals changed nothing.
    status, other = bare.call(conns[(admitted + 1) % 2], "var.set", write(1000))
    assert status == "error" and other["code"] == "rate_limited"
    now = bare.ok(conns[0], "var.get", {"name": name})  # reads name no agent
    assert (now["value"], now["version"]) == (admitted, admitted + 1)
    assert len(bare.ok(a, "var.history", {"name": name})["history"]) == admitted
    # bob has a bucket of his own, on the same connection as alice.
    bare.ok(conns[0], "var.create", {"agent": "bob", "credential": bob["credential"],
                                     "name": "shared/bob", "value": 1})
    # After retry_after, alice writes again, from either connection.
    retried(bare, conns[1], "var.set", write(2000), other)
    assert bare.ok(a, "var.get", {"name": name})["value"] == 2001
    # On the agent endpoint alice's bucket is its own: create + 5 sets there, then refused.
    n, err = until_refused(bare, a, "var.set", lambda i: {"agent": "alice", "name": name,
                                                          "value": -i}, 20)
    assert 5 <= n <= 7 and err["limit"] == "agent_requests"
    assert bare.ok(a, "var.get", {"name": name})["value"] == -(n - 1)
    # agent.send names its agent "from": bob's bucket, not alice's.
    for _ in range(5):
        bare.ok(a, "agent.send", {"from": "bob", "to": "alice", "body": 1})
    status, reply = bare.call(a, "agent.send", {"from": "alice", "to": "bob", "body": 1})
    assert status == "error" and reply["code"] == "rate_limited"


def test_reload_turns_limits_on_for_both_endpoints(make_daemon: Callable[..., Daemon],
                                                   bare: Wire) -> None:
    d = make_daemon(with_limits(""))
    d.start()
    s = bare.sock(d.agent_endpoint)
    for _ in range(50):
        bare.ok(s, "ping", {})
    hello = bare.ok(s, "hello", {"agent": "carol"})
    text = d.config_path.read_text().replace(
        "[limits]\n", "[limits]\nconnection_requests = 1.0\nconnection_requests_burst = 5\n")
    d.config_path.write_text(text)
    out = d.call("reload")
    assert out["ok"] and "limits.connection_requests" in out["changed"], out
    assert not out["restart_required"]
    admitted, err = until_refused(bare, s, "ping", lambda i: {}, 20)
    assert 5 <= admitted <= 7
    # The workers heard too: a shard endpoint limits its connections as well.
    shard = bare.sock(hello["shard_endpoints"][0])
    d.wait_until(lambda: bare.call(shard, "var.get", {"name": "none/0"})[1].get("code")
                 == "rate_limited", what="the shard endpoint refusing")
    d.wait_until(lambda: any((w.get("shard_traffic") or {}).get("rate_limited")
                             for w in d.workers()), what="a worker counting it")
    assert err["limit"] == "connection_requests"


BAD_LIMITS = [
    ("[limits]\nconnection_request = 1.0\n",
     ["[limits]", "unknown key 'connection_request'", "did you mean 'connection_requests'"]),
    ("[limits]\nagent_requests = -1.0\n", ["[limits] agent_requests", "from 0 to", "-1"]),
    ('[limits]\nagent_bytes = "lots"\n', ["[limits] agent_bytes", "a number", "'lots'"]),
    ("[limits]\nconnection_requests_burst = 0\n",
     ["[limits] connection_requests_burst", "from 1 to"]),
    ("[limits]\nconnection_requests_burst = 2.5\n",
     ["[limits] connection_requests_burst", "an integer"]),
    ("[limits]\nmax_tracked = true\n", ["[limits] max_tracked", "an integer", "True"]),
    ("[limits]\nagent_requests = nan\n", ["[limits] agent_requests", "a number"]),
    ("[limits]\nconnection_bytes = 1000.0\nconnection_bytes_burst = 1000\n",
     ["[limits] connection_bytes_burst", "at least [agents] max_message (2097152)"]),
    ("limits = 3\n", ["[limits] must be a table"]),
]


@pytest.mark.parametrize("text, expected", BAD_LIMITS)
def test_limits_config_is_validated(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        configmod.load(path)
    for part in expected:
        assert part in str(caught.value), str(caught.value)


def test_daemon_exits_78_on_a_bad_limits_section(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon("[limits]\nagent_requests = -5.0\n").start(wait_ready=False)
    assert d.wait(20) == 78
    assert "[limits] agent_requests: expected a number from 0" in d.log()


LIMIT = 100.0  # requests/s per agent
FLOOD_RATE = 20 * LIMIT
ROUNDS, SAMPLES = 5, 300


def test_a_flood_from_one_agent_is_refused_and_the_others_are_served(
        make_daemon: Callable[..., Daemon], bare: Wire) -> None:
    """One agent floods at 20x its limit (scripts/benchkit/flooder.py, its own process, at
    nice 19): most of the flood is refused as rate_limited, the flood is still a flood at
    the daemon, and another connection's requests meanwhile are all served. How much slower
    they get is a measurement, scripts/bench's "rate-limit isolation" row (goal: p95 within
    2x), not asserted here: a latency ratio on a shared 2-core machine failed CI at 2.38."""
    d = make_daemon(f"""
[agents]
endpoints = ["ipc://{{run}}/agents.sock"]
shard_endpoint = "ipc://{{run}}/shard"
[events]
endpoint = "ipc://{{run}}/events.sock"
[limits]
agent_requests = {LIMIT}
agent_requests_burst = {int(LIMIT)}
""").start()
    s = bare.sock(d.agent_endpoint)
    bare.ok(s, "hello", {"agent": "victim"})
    bare.ok(s, "var.create", {"agent": "victim", "name": "victim/v", "value": 0})
    rates: list[float] = []
    shares: list[float] = []  # of the flood's requests, refused
    limited_before = d.call("status")["agent_traffic"]["rate_limited"]
    for r in range(ROUNDS):
        with flooding(d, f"flooder-{r}", FLOOD_RATE):
            before, t0 = d.call("status")["agent_traffic"], time.monotonic()
            for _ in range(SAMPLES):  # the victim's reads: every one answered ok
                bare.ok(s, "var.get", {"name": "victim/v"})
            # What the flooder got through to the daemon meanwhile (without the victim's
            # requests): a niced flooder must still be a flood, and the limit must be
            # what met it.
            after = d.call("status")["agent_traffic"]
            sent = after["requests"] - before["requests"] - SAMPLES
            rates.append(sent / (time.monotonic() - t0))
            shares.append((after["rate_limited"] - before["rate_limited"]) / sent)
    refused = d.call("status")["agent_traffic"]["rate_limited"] - limited_before
    report = (f"{refused} refused, flood rates {[round(r) for r in rates]}/s, refused "
              f"{[round(x, 2) for x in shares]}")
    assert statistics.median(rates) >= 5 * LIMIT, report
    assert statistics.median(shares) >= 0.8, report
