"""Rows for universal variables, with Redis (redis-server on loopback, AOF everysec, driven by
redis-py) doing the same gets and sets in the same run."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any

import zmq

from benchkit import Row
from benchkit.agent_rows import tcp_daemon
from benchkit.load import run_clients
from benchkit.stats import pick_median_rep, spread, summary
from mabeamd.net import wire
from mabeamd.net.frames import recv_batch, recv_frames, send_frames
from mabeamd.storage.sharding import shard_of
from mabeamd.testing import Daemon, free_port, short_tmpdir

VALUE = {"x": 12345, "tag": "bench", "pad": "p" * 64}


def var_daemon(fsync: str = "everysec") -> tuple[Daemon, str]:
    return tcp_daemon("max_in_flight = 1024",
                      f'[variables]\nfsync = "{fsync}"\nsnapshot_every = 1000000')


# --- clients (run in their own processes) --------------------------------------------------


def _call(s: zmq.Socket[Any], rid: int, op: str, body: dict[str, Any]) -> dict[str, Any]:
    # frames.py: the SDK's multipart calls (pyzmq's wrappers build an enum per frame)
    send_frames(s, wire.encode({"id": rid, "op": op}, body))
    _, header, reply = recv_frames(s)
    if wire.unpack(header).get("status") != "ok":
        raise RuntimeError(f"{op} failed: {wire.unpack(reply)}")
    result: dict[str, Any] = wire.unpack(reply)
    return result


class Conn:
    """A wire client as docs/protocol.md describes it, in any language: hello on the agent
    endpoint, then variable requests straight to their shard's endpoint (one hop), writes
    carrying the credential from hello. via="agent" sends everything through the agent
    endpoint instead (two hops: the arbiter forwards to the worker)."""

    def __init__(self, endpoint: str, agent: str, via: str = "shard") -> None:
        self.ctx = zmq.Context()
        self.agent_sock = self._dealer(endpoint)
        hello = _call(self.agent_sock, 0, "hello", {"agent": agent})
        self.agent, self.credential = agent, hello.get("credential")
        # Writes straight to a shard endpoint are no sign of life to the arbiter: beat as an
        # agent must (docs/protocol.md), or a slow run outlives its registration.
        self.beat_every = float(hello["heartbeat_interval"])
        self.beat_at = time.monotonic()
        self.shards = int(hello["shards"])
        eps = hello.get("shard_endpoints") or []
        if via == "shard" and not (eps and all(eps) and self.credential):
            raise RuntimeError("the daemon offers no shard endpoints")
        self.socks = [self._dealer(e) for e in eps] if via == "shard" else \
            [self.agent_sock] * self.shards

    def _dealer(self, endpoint: str) -> zmq.Socket[Any]:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        return s

    def body(self, op: str, name: str, value: Any = None) -> dict[str, Any]:
        if op == "var.get":
            return {"name": name}
        out = {"agent": self.agent, "name": name, "value": value}
        if self.socks[0] is not self.agent_sock:
            out["credential"] = self.credential
        return out

    def sock(self, name: str) -> zmq.Socket[Any]:
        return self.socks[shard_of(name, self.shards)]

    def beat(self, rid: int) -> None:
        """A heartbeat when one is due (see __init__)."""
        if time.monotonic() - self.beat_at >= self.beat_every:
            _call(self.agent_sock, 10**9 + rid, "heartbeat", {"agents": [self.agent]})
            self.beat_at = time.monotonic()

    def call(self, rid: int, op: str, name: str, value: Any = None) -> dict[str, Any]:
        self.beat(rid)
        return _call(self.sock(name), rid, op, self.body(op, name, value))

    def close(self) -> None:
        for s in {*self.socks, self.agent_sock}:
            s.close()
        self.ctx.term()


def mabeam_client(endpoint: str, mode: str, n: int, warmup: int, out: Any) -> None:
    """Sequential latencies (us) of var.get / var.set over the wire (mode "get", "set"; one
    hop to the shard endpoint), of var.get through the agent endpoint (mode "get-agent"), or
    of shared-memory reads through the SDK (mode "shm")."""
    agent, names = f"bench-{os.getpid()}", [f"bench/{os.getpid()}/{i}" for i in range(100)]
    op, _, via = mode.partition("-")
    conn = Conn(endpoint, agent, via or "shard")
    for i, name in enumerate(names):
        conn.call(i + 1, "var.create", name, VALUE)
    lat: list[float] = []
    if mode == "shm":
        from mabeamd.client import Client

        with Client(endpoint) as c:
            c.register(f"{agent}-sdk")
            for i in range(warmup + n):
                t0 = time.perf_counter_ns()
                c.get_var(names[i % 100])
                if i >= warmup:
                    lat.append((time.perf_counter_ns() - t0) / 1000)
    else:
        for i in range(warmup + n):
            name = names[i % 100]
            t0 = time.perf_counter_ns()
            conn.call(1000 + i, f"var.{op}", name, VALUE)
            if i >= warmup:
                lat.append((time.perf_counter_ns() - t0) / 1000)
    conn.close()
    out.put(lat)


def mabeam_rate(endpoint: str, seconds: float, window: int, out: Any) -> None:
    """Pipelined get/set mix (1:1) to the shard endpoints, `window` requests in flight."""
    conn = Conn(endpoint, f"rate-{os.getpid()}")
    names = [f"rate/{os.getpid()}/{i}" for i in range(100)]
    for i, name in enumerate(names):
        conn.call(i + 1, "var.create", name, VALUE)
    poller = zmq.Poller()
    for s in conn.socks:
        poller.register(s, zmq.POLLIN)
    sent = done = 0
    deadline = time.monotonic() + seconds

    def send(k: int) -> None:
        name = names[k % 100]
        op = "var.get" if k % 2 else "var.set"
        send_frames(conn.sock(name), wire.encode({"id": k, "op": op},
                                                 conn.body(op, name, VALUE)))

    def receive(timeout: int) -> int:
        got = 0
        for s, _ in poller.poll(timeout):
            got += len(recv_batch(s, 1 << 30))
        return got

    while sent < window:
        send(sent)
        sent += 1
    while time.monotonic() < deadline:
        got = receive(1000)
        done += got
        for _ in range(got):
            send(sent)
            sent += 1
    end = time.monotonic() + 5
    while done < sent and time.monotonic() < end:
        done += receive(100)
    conn.close()
    out.put((done, seconds))


def redis_client(port: int, mode: str, n: int, warmup: int, out: Any) -> None:
    import msgpack
    import redis

    r = redis.Redis(port=port)
    blob = msgpack.packb(VALUE)
    names = [f"bench:{os.getpid()}:{i}" for i in range(100)]
    for name in names:
        r.set(name, blob)
    lat: list[float] = []
    for i in range(warmup + n):
        t0 = time.perf_counter_ns()
        if mode == "set":
            r.set(names[i % 100], blob)
        else:
            msgpack.unpackb(r.get(names[i % 100]))
        if i >= warmup:
            lat.append((time.perf_counter_ns() - t0) / 1000)
    out.put(lat)


def redis_rate(port: int, seconds: float, window: int, out: Any) -> None:
    import msgpack
    import redis

    r = redis.Redis(port=port)
    blob = msgpack.packb(VALUE)
    names = [f"rate:{os.getpid()}:{i}" for i in range(100)]
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        p = r.pipeline(transaction=False)
        for k in range(window):
            if k % 2:
                p.get(names[k % 100])
            else:
                p.set(names[k % 100], blob)
        p.execute()
        done += window
    out.put((done, seconds))


# --- the peer ------------------------------------------------------------------------------


class RedisPeer:
    """redis-server on loopback with AOF everysec, started and stopped by the bench."""

    def __init__(self) -> None:
        self.why_not = ""
        self.port = free_port()
        self.dir = short_tmpdir()
        self.proc: subprocess.Popen[bytes] | None = None
        if shutil.which("redis-server") is None:
            self.why_not = "redis-server not installed (apt-get install redis-server)"
        else:
            try:
                import redis  # noqa: F401
            except ImportError:
                self.why_not = "redis-py not installed (pip install redis)"

    def __enter__(self) -> RedisPeer:
        if self.why_not:
            return self
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        for _ in range(100):
            try:
                redis.Redis(port=self.port).ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.why_not = "redis-server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- rows ----------------------------------------------------------------------------------


def lat_row(metric: str, ours: list[list[float]], theirs: list[list[float]] | None,
            why_not: str, peer: str = "Redis 7 (redis-py, AOF everysec)", **kw: Any) -> Row:
    """A latency row (us) from repetitions of ours and of the Redis peer's (None: not run)."""
    i, spr = pick_median_rep(ours)
    p50, p95, p99 = summary(ours[i])
    row = Row(metric, "us", p50=p50, p95=p95, p99=p99, spread=spr, samples=len(ours[i]),
              reps=len(ours), **kw)
    if theirs:
        j, _ = pick_median_rep(theirs)
        row.peer, row.peer_value = peer, summary(theirs[j])[1]
        row.ratio = p95 / row.peer_value
    else:
        row.peer = f"Redis: not run ({why_not})"
    return row


def variables(n: int, reps: int, seconds: float) -> list[Row]:
    rows: list[Row] = []
    d, endpoint = var_daemon("everysec")
    try:
        d.start()
        ours = {m: [run_clients(mabeam_client, [(endpoint, m, n, 200)])[0] for _ in range(reps)]
                for m in ("shm", "get", "set", "get-agent")}
        rates = [sum(x for x, _ in run_clients(mabeam_rate, [(endpoint, seconds, 64)] * 2))
                 / seconds for _ in range(reps)]
        d.stop()
    finally:
        d.cleanup()
    with RedisPeer() as peer:
        theirs: dict[str, list[list[float]]] = {}
        peer_rates: list[float] = []
        if not peer.why_not:
            theirs = {m: [run_clients(redis_client, [(peer.port, m, n, 200)])[0]
                          for _ in range(reps)] for m in ("get", "set")}
            peer_rates = [sum(x for x, _ in run_clients(redis_rate, [(peer.port, seconds, 64)]
                                                         * 2)) / seconds for _ in range(reps)]
        why = peer.why_not
    rows.append(lat_row("variable read, same host (SDK, shared memory)", ours["shm"],
                         theirs.get("get"), why, seed_target="< 1000", goal="p95 <= 5",
                         note="Client.get_var: no round trip; peer = a Redis GET over "
                              "loopback (goal: >= 10x faster)"))
    rows.append(lat_row("variable get over the wire (tcp loopback)", ours["get"],
                         theirs.get("get"), why, seed_target="< 1000", goal="p95 <= 150",
                         note="var.get on the shard's endpoint: client -> worker -> back"))
    rows.append(lat_row("variable get through the agent endpoint (two hops)",
                         ours["get-agent"], theirs.get("get"), why,
                         note="var.get: client -> arbiter -> worker -> arbiter -> client: "
                              "what the shard endpoint saves"))
    rows.append(lat_row("variable set, acknowledged (fsync everysec)", ours["set"],
                         theirs.get("set"), why, seed_target="< 1000", goal="p95 <= 250",
                         note="var.set on the shard's endpoint: WAL append before the "
                              "reply; peer: SET with AOF everysec (goal: writes >= 1.0x "
                              "Redis)"))
    mid = sorted(rates)[len(rates) // 2]
    rate_row = Row("variable ops/s pipelined (get/set 1:1, 2 procs x 64)", "ops/s",
                   seed_target="> 10,000", goal=">= 60,000", rate=mid, spread=spread(rates),
                   reps=reps, note=f"{seconds:g} s per repetition")
    if peer_rates:
        pm = sorted(peer_rates)[len(peer_rates) // 2]
        rate_row.peer, rate_row.peer_value, rate_row.ratio = \
            "Redis 7 (redis-py pipelines of 64)", pm, mid / pm
    else:
        rate_row.peer = f"Redis: not run ({why})"
    rows.append(rate_row)
    return rows


class Scraper:
    """Scrapes a daemon's /metrics every `interval` seconds in a thread, as Prometheus would
    (at 15 s usually; 1 s here, to make the cost visible)."""

    def __init__(self, port: int, interval: float = 1.0) -> None:
        import threading
        self.port, self.interval = port, interval
        self.scrapes = 0
        self.seconds: list[float] = []  # each scrape's duration
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import urllib.request
        url = f"http://127.0.0.1:{self.port}/metrics"
        while not self._stop.wait(self.interval):
            t0 = time.perf_counter()
            with urllib.request.urlopen(url, timeout=10) as r:
                r.read()
            self.seconds.append(time.perf_counter() - t0)
            self.scrapes += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def metrics_overhead(n: int, reps: int, seconds: float) -> list[Row]:
    """Pipelined ops/s and get/set p95 on a daemon with metrics off (`listen = ""`) and one
    with them on and scraped every second, repetitions interleaved (off, on, off, on ...) so
    that a drifting machine moves both alike. Requests are counted by op either way
    (observe/opstats.py): what "off" saves is the listener and the scrapes."""
    port = free_port()
    off, off_ep = tcp_daemon("max_in_flight = 1024", '[variables]\nfsync = "everysec"\n'
                             'snapshot_every = 1000000\n[metrics]\nlisten = ""')
    on, on_ep = tcp_daemon("max_in_flight = 1024", '[variables]\nfsync = "everysec"\n'
                           f'snapshot_every = 1000000\n[metrics]\nlisten = "127.0.0.1:{port}"')
    rates: dict[str, list[float]] = {"off": [], "on": []}
    lat: dict[str, dict[str, list[list[float]]]] = {"off": {"get": [], "set": []},
                                                     "on": {"get": [], "set": []}}
    scrapes: list[float] = []
    try:
        off.start()
        on.start()
        with Scraper(port) as scraper:
            for _ in range(reps):
                for which, ep in (("off", off_ep), ("on", on_ep)):
                    rates[which].append(sum(x for x, _ in run_clients(
                        mabeam_rate, [(ep, seconds, 64)] * 2)) / seconds)
                    for m in ("get", "set"):
                        lat[which][m].append(run_clients(mabeam_client, [(ep, m, n, 200)])[0])
            scrapes = scraper.seconds
        off.stop()
        on.stop()
    finally:
        off.cleanup()
        on.cleanup()
    mid = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    rows = [Row("metrics overhead: pipelined ops/s, on (scraped 1/s) vs off", "ops/s",
                goal="on >= 0.97x off", rate=mid["on"], spread=spread(rates["on"]), reps=reps,
                peer="the same, metrics off", peer_value=mid["off"],
                ratio=mid["on"] / mid["off"],
                note=f"off spread {spread(rates['off'])}; {len(scrapes)} scrapes; interleaved",
                extra={"off": rates["off"], "on": rates["on"]})]
    for m, what in (("get", "variable get p95 (wire)"), ("set", "variable set p95 (everysec)")):
        i, spr = pick_median_rep(lat["on"][m])
        j, spr_off = pick_median_rep(lat["off"][m])
        p50, p95, p99 = summary(lat["on"][m][i])
        off95 = summary(lat["off"][m][j])[1]
        rows.append(Row(f"metrics overhead: {what}, on vs off", "us", goal="on <= 1.03x off",
                        p50=p50, p95=p95, p99=p99, spread=spr, samples=len(lat["on"][m][i]),
                        reps=reps, peer="the same, metrics off", peer_value=off95,
                        ratio=p95 / off95, note=f"off spread {spr_off}"))
    if scrapes:
        p50, p95, p99 = summary([s * 1e3 for s in scrapes])
        rows.append(Row("metrics scrape (GET /metrics, 2 workers, under load)", "ms", p50=p50,
                        p95=p95, p99=p99, samples=len(scrapes), reps=1,
                        note="the arbiter's loop time per scrape, during the rows above"))
    return rows


def transports(n: int, reps: int) -> list[Row]:
    """Issue 18's "ipc shard endpoints for same-host agents": var.get and var.set p95 on the
    shard endpoints over TCP loopback and over ipc (Unix sockets), two daemons, repetitions
    interleaved (tcp, ipc, tcp, ipc ...) so that a drifting machine moves both alike."""
    tcp, tcp_ep = var_daemon("everysec")
    ipc_dir = short_tmpdir()
    ipc, ipc_ep = tcp_daemon("max_in_flight = 1024", '[variables]\nfsync = "everysec"\n'
                             'snapshot_every = 1000000', shard_endpoint=f"ipc://{ipc_dir}/shard")
    lat: dict[str, dict[str, list[list[float]]]] = {
        t: {"get": [], "set": []} for t in ("tcp", "ipc")}
    try:
        tcp.start()
        ipc.start()
        for _ in range(reps):
            for t, ep in (("tcp", tcp_ep), ("ipc", ipc_ep)):
                for m in ("get", "set"):
                    lat[t][m].append(run_clients(mabeam_client, [(ep, m, n, 200)])[0])
        tcp.stop()
        ipc.stop()
    finally:
        tcp.cleanup()
        ipc.cleanup()
        shutil.rmtree(ipc_dir, ignore_errors=True)
    rows = []
    for m, what in (("get", "variable get over ipc shard endpoints"),
                    ("set", "variable set over ipc shard endpoints (fsync everysec)")):
        i, spr = pick_median_rep(lat["ipc"][m])
        j, spr_tcp = pick_median_rep(lat["tcp"][m])
        p50, p95, p99 = summary(lat["ipc"][m][i])
        tcp95 = summary(lat["tcp"][m][j])[1]
        rows.append(Row(what, "us", p50=p50, p95=p95, p99=p99, spread=spr,
                        samples=len(lat["ipc"][m][i]), reps=reps,
                        peer="the same over tcp loopback", peer_value=tcp95,
                        ratio=p95 / tcp95, note=f"tcp spread {spr_tcp}; interleaved"))
    return rows
