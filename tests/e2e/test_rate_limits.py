"""Rate limits ([limits]) against a real daemon: the burst, then rate_limited with
retry_after, accepted again after waiting it; bytes/s; one agent's bucket across two
connections; a refusal changes nothing; reload; config validation; and the issue's
acceptance test: a flood from one agent leaves the others' p95 within 2x of their quiet
p95."""

from __future__ import annotations

import os
import statistics
import subprocess
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
from mabeamd.testing import ENDPOINTS, Daemon, free_port


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


# The flooder: its own process (in the test's, its GIL would delay the victim), one
# connection, one agent, sending var.set open loop at RATE per second whatever the replies
# say, reading them only to keep its queue from filling.
FLOODER = """
import sys, time, zmq
from mabeamd.net import wire
endpoint, agent, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
sock = zmq.Context().socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(endpoint)
for op, body in (("hello", {"agent": agent}),
                 ("var.create", {"agent": agent, "name": agent + "/v", "value": 0})):
    sock.send_multipart(wire.encode({"id": 0, "op": op}, body))
    sock.recv_multipart()
frames = wire.encode({"id": 1, "op": "var.set"},
                     {"agent": agent, "name": agent + "/v", "value": b"x" * 1000})
print("flooding", flush=True)
sent, t0 = 0, time.monotonic()
while True:
    for _ in range(min(int((time.monotonic() - t0) * rate) - sent, 200)):
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            break
    while sock.poll(0):
        sock.recv_multipart()
    time.sleep(0.001)
"""
LIMIT = 100.0  # requests/s per agent
FLOOD_RATE = 20 * LIMIT
ROUNDS, SAMPLES = 9, 600


def test_a_flood_from_one_agent_leaves_the_others_p95_within_2x(
        make_daemon: Callable[..., Daemon], bare: Wire) -> None:
    """The issue's acceptance test. The machine is shared and noisy, so it does not have to
    be idle: each round measures a quiet phase and then a flooded one, back to back (the
    same background for both), and the median over ROUNDS of each round's flooded/quiet
    p95 ratio must be at most 2: a neighbour's burst that hits one phase of a round moves
    that round's ratio, not the median.

    The flooder runs at nice 19. What is tested is the daemon's isolation -- what the flood
    costs others through the daemon -- not the kernel sharing two cores between the
    flooding process and the victim (a flooder on another host costs this one nothing but
    the daemon's own work; at normal priority here, flooding another daemon on the same
    machine slowed the victim as much as flooding the victim's own: docs/benchmarks.md)."""
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

    def p95() -> float:
        """The victim's p95 over SAMPLES reads through the agent endpoint: the path the
        flood takes (arbiter, worker, arbiter). Reads name no agent, so the victim is not
        held to LIMIT itself and asks as fast as it is answered."""
        lat = []
        for _ in range(SAMPLES):
            t = time.perf_counter()
            bare.ok(s, "var.get", {"name": "victim/v"})
            lat.append(time.perf_counter() - t)
        return sorted(lat)[int(0.95 * SAMPLES)]

    p95()  # warm-up
    quiet: list[float] = []
    flooded: list[float] = []
    rates: list[float] = []
    shares: list[float] = []  # of the flood's requests, refused
    limited_before = d.call("status")["agent_traffic"]["rate_limited"]
    for r in range(ROUNDS):
        quiet.append(p95())
        flooder = subprocess.Popen([sys.executable, "-c", FLOODER, d.agent_endpoint,
                                    f"flooder-{r}", str(FLOOD_RATE)],
                                   stdout=subprocess.PIPE, text=True)
        try:
            os.setpriority(os.PRIO_PROCESS, flooder.pid, 19)  # see the docstring
            assert flooder.stdout is not None and flooder.stdout.readline() == "flooding\n"
            mark = d.call("status")["agent_traffic"]["rate_limited"]
            d.wait_until(lambda m=mark: d.call("status")["agent_traffic"]["rate_limited"]
                         > m + 100, what="the flood being refused")
            before, t0 = d.call("status")["agent_traffic"], time.monotonic()
            flooded.append(p95())
            # What the flooder got through to the daemon meanwhile (without the victim's
            # requests): a niced flooder must still be a flood, and the limit must be
            # what met it.
            after = d.call("status")["agent_traffic"]
            sent = after["requests"] - before["requests"] - SAMPLES
            rates.append(sent / (time.monotonic() - t0))
            shares.append((after["rate_limited"] - before["rate_limited"]) / sent)
        finally:
            flooder.terminate()
            flooder.wait(10)
    refused = d.call("status")["agent_traffic"]["rate_limited"] - limited_before
    ratios = [f / q for q, f in zip(quiet, flooded, strict=True)]
    report = (f"quiet p95s {[round(q * 1e6) for q in quiet]} us, flooded "
              f"{[round(f * 1e6) for f in flooded]} us, ratios "
              f"{[round(r, 2) for r in ratios]}, {refused} refused, flood rates "
              f"{[round(r) for r in rates]}/s, refused {[round(x, 2) for x in shares]}")
    print(report)
    assert statistics.median(rates) >= 5 * LIMIT, report
    assert statistics.median(shares) >= 0.8, report
    assert statistics.median(ratios) <= 2, report
