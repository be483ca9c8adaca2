"""Cluster mode on real etcd: three etcd members and up to three mabeamd nodes on loopback.

Every test runs real processes (etcd from Debian's etcd-server, real daemons) and kills them
with real signals. Tests that kill or pause etcd members get an etcd cluster of their own;
the others share one per module, each under a cluster name of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from mabeamd.client import (
    Client,
    Exists,
    Forbidden,
    NotFound,
    Timeout,
    Unavailable,
    VersionMismatch,
)
from mabeamd.client.errors import MabeamError
from mabeamd.cluster.local import LocalEtcd, etcd_binary
from mabeamd.testing import Daemon, short_tmpdir
from tests.e2e.test_agents import Events
from tests.support.linearizability import Op, check

pytestmark = [
    pytest.mark.skipif(etcd_binary() is None, reason="etcd not installed (Debian: etcd-server)"),
    pytest.mark.timeout(300),
]

_names = itertools.count()


@pytest.fixture(scope="module")
def shared_etcd() -> Iterator[LocalEtcd]:
    etcd = LocalEtcd(short_tmpdir() / "etcd").start()
    yield etcd
    etcd.stop()


@pytest.fixture
def own_etcd() -> Iterator[LocalEtcd]:
    etcd = LocalEtcd(short_tmpdir() / "etcd").start()
    yield etcd
    etcd.stop()


class Cluster:
    """Nodes of one cluster (its own name) on an etcd cluster."""

    def __init__(self, etcd: LocalEtcd, make: Callable[..., Daemon]) -> None:
        self.etcd = etcd
        self.name = f"t{next(_names)}-{time.monotonic_ns() % 10**6}"
        self.make = make
        self.nodes: dict[str, Daemon] = {}
        self.clients: list[Client] = []

    def config(self, node: str, *, etcd: list[str] | None = None, ttl: int = 3,
               timeout: float = 2.0) -> str:
        return (f'\n[cluster]\netcd = {json.dumps(etcd or self.etcd.endpoints)}\n'
                f'node = "{node}"\nname = "{self.name}"\nlease_ttl = {ttl}\n'
                f'request_timeout = {timeout}\n')

    def start(self, *names: str, workers: int = 2, **kw: Any) -> list[Daemon]:
        made = [self.make(self.config(n, **kw), workers=workers) for n in names]
        for n, d in zip(names, made, strict=True):
            d.start(timeout=60)
            self.nodes[n] = d
        return made

    def client(self, node: str, **kw: Any) -> Client:
        c = Client(self.nodes[node].agent_endpoint, timeout=10, **kw)
        self.clients.append(c)
        return c

    def status(self, node: str) -> dict[str, Any]:
        out: dict[str, Any] = self.nodes[node].call("cluster.status")
        return out

    def close(self) -> None:
        for c in self.clients:
            c.close()


@pytest.fixture
def cluster(shared_etcd: LocalEtcd, make_daemon: Callable[..., Daemon]) -> Iterator[Cluster]:
    c = Cluster(shared_etcd, make_daemon)
    yield c
    c.close()


@pytest.fixture
def lonely_cluster(own_etcd: LocalEtcd, make_daemon: Callable[..., Daemon]) -> Iterator[Cluster]:
    c = Cluster(own_etcd, make_daemon)
    yield c
    c.close()


def live(status: dict[str, Any]) -> list[str] | None:
    """The live nodes a cluster status lists; None when etcd did not answer that status."""
    return [n["node"] for n in status["nodes"]] if "nodes" in status else None


def wait(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = pred()
            if got:
                return got
        except MabeamError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def test_variables_behave_as_one_cluster_wide(cluster: Cluster) -> None:
    cluster.start("a", "b", "c")
    a, b, c = (cluster.client(n) for n in "abc")
    for cl, agent in ((a, "alice"), (b, "bob"), (c, "carol")):
        cl.register(agent)
    events = Events(cluster.nodes["c"].event_endpoint, "var.")
    try:
        names = [f"v{i}" for i in range(8)]  # over both shards
        for i, name in enumerate(names):
            a.create_var("alice", name, i)
        # Linearizable reads on another node see every acknowledged write at once.
        for i, name in enumerate(names):
            assert c.get_var(name, consistent=True)["value"] == i
        # The cached read (shared memory on node c) catches up.
        wait(lambda: all(c.get_var(n)["value"] == i for i, n in enumerate(names)),
             what="c's cache")
        assert b.set_var("bob", "v0", "b", expect_version=1)["version"] == 2
        with pytest.raises(VersionMismatch):
            c.set_var("carol", "v0", "c", expect_version=1)
        assert c.set_var("carol", "v0", "c", expect_version=2)["version"] == 3
        hist = wait(lambda: (h := a.var_history("v0")) and h["version"] == 3 and h,
                    what="a's history of v0")
        assert [(p["version"], p["value"], p["modified_by"]) for p in hist["history"]] == \
            [(1, 0, "alice"), (2, "b", "bob")]
        listed = c.list_vars(prefix="v")
        assert sorted(v["name"] for v in listed["vars"]) == names
        a.delete_var("alice", "v1")
        wait(lambda: not any(v["name"] == "v1" for v in c.list_vars(prefix="v")["vars"]),
             what="the delete on c")
        with pytest.raises(MabeamError, match="no variable"):
            c.get_var("v1", consistent=True)
        # Node c's event endpoint publishes the other nodes' writes, with the writer node.
        ev = wait(lambda: next((body for topic, body in list(events.items)
                                if topic == "var.v0" and body.get("version") == 2), None),
                  what="b's set of v0 published on c")
        assert ev["node"] == "b" and ev["value"] == "b" and ev["op"] == "set"
        assert wait(lambda: next((body for topic, body in list(events.items)
                                  if topic == "var.v1" and body.get("op") == "delete"), None),
                    what="a's delete of v1 published on c")
    finally:
        events.close()


def test_a_batch_on_one_node_is_seen_on_another(cluster: Cluster) -> None:
    """var.batch in cluster mode: its writes go to etcd (they are answered once etcd has),
    each op on its own, through shard endpoints and through the agent endpoint."""
    cluster.start("a", "b")
    a, b = cluster.client("a"), cluster.client("b", direct=False)
    a.register("alice")
    b.register("bob")
    names = [f"bt{i}" for i in range(8)]  # over both shards
    got = a.batch([{"op": "var.create", "agent": "alice", "name": n, "value": i}
                   for i, n in enumerate(names)]
                  + [{"op": "var.set", "agent": "alice", "name": names[0], "value": "x",
                      "expect_version": 5},
                     {"op": "var.set", "agent": "alice", "name": names[0], "value": "y",
                      "expect_version": 1}])
    assert [r["version"] for r in got[:8]] == [1] * 8
    assert isinstance(got[8], VersionMismatch) and got[9]["version"] == 2
    seen = b.batch([{"op": "var.get", "name": n, "consistent": True} for n in names]
                   + [{"op": "var.set", "agent": "bob", "name": names[1], "value": "b"},
                      {"op": "var.get", "name": "bt-none"}])
    assert [r["value"] for r in seen[:8]] == ["y", *range(1, 8)]
    assert seen[8]["version"] == 2 and isinstance(seen[9], MabeamError)
    assert a.get_var(names[1], consistent=True)["value"] == "b"


def test_a_write_right_after_another_nodes_create_is_not_refused_not_found(
        cluster: Cluster) -> None:
    """Node b's cache learns of node a's create through its watch, a moment later; a write
    on b in that moment asks etcd before answering not_found. Also: a name that does not
    exist anywhere is still not_found, and its write changes nothing."""
    cluster.start("a", "b", workers=1)
    a, b = cluster.client("a"), cluster.client("b")
    a.register("alice")
    b.register("bob")
    for i in range(40):
        a.create_var("alice", f"fresh{i}", 0)
        assert b.set_var("bob", f"fresh{i}", i)["version"] == 2
        assert b.delete_var("bob", f"fresh{i}")["deleted"] is True
    with pytest.raises(NotFound):
        b.set_var("bob", "never-created", 1)
    with pytest.raises(NotFound):
        a.get_var("never-created", consistent=True)


def test_agents_are_discovered_and_reached_across_nodes(cluster: Cluster) -> None:
    cluster.start("a", "b", "c", workers=1)
    a, b, c = (cluster.client(n) for n in "abc")
    a.register("seller", ["sell", "fruit"], metadata={"site": "north"})
    b.register("buyer", ["buy"])
    events = Events(cluster.nodes["c"].event_endpoint, "agent.")
    try:
        c.register("watcher", ["sell"])
        # c's event endpoint publishes c's own agents' events, naming the node.
        assert events.wait("agent.registered", "watcher", timeout=10)["node"] == "c"
    finally:
        events.close()
    # Discovery on any node sees every node's agents (by id, one page), with their node.
    listed = wait(lambda: (r := c.list_agents(status="any")) and len(r["agents"]) == 3 and r,
                  what="three agents listed on c")
    assert [(x["id"], x["node"]) for x in listed["agents"]] == \
        [("buyer", "b"), ("seller", "a"), ("watcher", "c")]
    sellers = c.discover(capabilities=["sell"])
    assert [x["id"] for x in sellers] == ["seller", "watcher"]
    assert [x["id"] for x in c.discover(capabilities=["sell"], metadata={"site": "north"})] \
        == ["seller"]
    page = c.list_agents(status="any", limit=2)
    assert [x["id"] for x in page["agents"]] == ["buyer", "seller"] and page["next"]
    rest = c.list_agents(status="any", limit=2, after=page["next"])
    assert [x["id"] for x in rest["agents"]] == ["watcher"] and rest["next"] is None
    assert b.get_agent("seller")["node"] == "a"
    assert len(b.wait_for(2, capabilities=["sell"], timeout=5)) == 2
    # agent.send from c reaches the agent on a, through the node link.
    sent = c.send("watcher", "seller", {"price": 3}, topic="offer")
    assert sent["delivered"] is True and sent["node"] == "a"
    push = a.next_push(timeout=10)
    assert push.op == "message" and push.body["from"] == "watcher" and \
        push.body["body"] == {"price": 3} and push.body["topic"] == "offer"
    # An id is the cluster's: a live agent's id cannot be taken on another node.
    with pytest.raises(Exists, match="registered on node 'a'"):
        b.register("seller")
    # A bye removes the entry everywhere.
    b.bye("buyer")
    wait(lambda: [x["id"] for x in c.list_agents(status="any")["agents"]] ==
         ["seller", "watcher"], what="buyer gone from c's view")
    # node.deliver takes only the cluster's token.
    with pytest.raises(MabeamError, match="token"):
        c.request("node.deliver", {"token": "guess", "from": "x", "to": "seller"})


def test_a_session_locks_cluster_wide_and_applies_its_outcome_once(cluster: Cluster) -> None:
    import asyncio

    from mabeamd.client import AsyncClient, Conflict
    from tests.e2e.test_sessions import Scripted, accept

    cluster.start("a", "b", workers=1)
    b = cluster.client("b")
    b.register("other")

    async def main() -> None:
        ep = cluster.nodes["a"].agent_endpoint
        voters = [Scripted(f"v{i}", ep, {"consensus": accept}) for i in range(3)]
        tasks = [asyncio.create_task(v.run_async()) for v in voters]

        async def slow(inv: Any) -> Any:
            await asyncio.sleep(1.5)
            return {"accept": True}

        try:
            async with AsyncClient(ep, timeout=15) as c:
                await c.register("boss")
                await c.wait_for(3, capabilities=["p"])
                await c.create_var("boss", "{s}.plan", "old")
                await c.create_var("boss", "{s}.budget", 1)
                out = await c.start_session(
                    "boss", "consensus", participants=["v0", "v1", "v2"],
                    variables=["{s}.plan"], params={"proposal": "new"}, deadline=10)
                assert out["state"] == "applied" and out["writes"] == {"{s}.plan": "new"}
                got = await asyncio.to_thread(b.get_var, "{s}.plan", consistent=True)
                assert got["value"] == "new" and got["modified_by"] == f"session:{out['session']}"
                # While a session holds a variable, no node may write it.
                voters[0].answers["consensus"] = slow
                started = asyncio.ensure_future(c.start_session(
                    "boss", "consensus", participants=["v0", "v1", "v2"],
                    variables=["{s}.budget"], params={"proposal": 2}, deadline=10))
                await asyncio.sleep(0.7)
                with pytest.raises(Conflict, match="locked by coordination session"):
                    await asyncio.to_thread(b.set_var, "other", "{s}.budget", 99)
                done = await started
                assert done["state"] == "applied"
                # Its locks went with the outcome: writes pass again, from any node.
                assert (await asyncio.to_thread(b.set_var, "other", "{s}.budget", 3))[
                    "version"] == 3
        finally:
            for v in voters:
                v.stop()
            await asyncio.wait(tasks, timeout=30)

    asyncio.run(main())


def test_a_session_on_one_node_invites_agents_on_the_others(cluster: Cluster) -> None:
    import asyncio

    from mabeamd.client import AsyncClient
    from tests.e2e.test_sessions import Scripted, accept, vote

    cluster.start("a", "b", "c", workers=1)
    eps = {n: cluster.nodes[n].agent_endpoint for n in "abc"}

    async def main() -> None:
        agents = [Scripted("va", eps["a"], {"consensus": accept, "vote": vote("x")}),
                  Scripted("vc", eps["c"], {"consensus": accept, "vote": vote("x")}),
                  Scripted("vb", eps["b"], {"consensus": accept, "vote": vote("y")})]
        tasks = [asyncio.create_task(x.run_async()) for x in agents]
        try:
            async with AsyncClient(eps["b"], timeout=20) as c:
                await c.register("boss")
                await c.wait_for(3, capabilities=["p"])  # every node's agents, from b
                await c.create_var("boss", "plan", "old")
                out = await c.start_session("boss", "consensus",
                                            participants=["va", "vb", "vc"],
                                            variables=["plan"], params={"proposal": "new"},
                                            deadline=15)
                assert out["state"] == "applied", out
                assert out["result"]["passed"] and out["writes"] == {"plan": "new"}
                await c.create_var("boss", "choice", None)
                polled = await c.start_session("boss", "vote", query={"capabilities": ["p"]},
                                               variables=["choice"],
                                               params={"options": ["x", "y"]}, deadline=15)
                assert polled["state"] == "applied", polled
                # va and vc (on the other nodes) outvote vb
                assert polled["result"]["decision"] == "x" and polled["result"]["votes"] == 3
            async with AsyncClient(eps["c"], timeout=10) as far:
                got = await far.get_var("plan", consistent=True)
                assert got["value"] == "new" and got["version"] == 2  # applied once
                # Any node answers for any session: c asks b (named in the id) for b's.
                sid = polled["session"]
                assert sid.startswith("sb.")
                seen = await far.get_session(sid)
                assert (seen["state"], seen["result"]) == ("applied", polled["result"])
                await far.register("meddler")
                with pytest.raises(Forbidden, match="only the initiator 'boss'"):
                    await far.cancel_session("meddler", sid)
                with pytest.raises(NotFound, match="no session"):
                    await far.get_session(sid.replace("-", "-9", 1))
                with pytest.raises(NotFound, match="not in the cluster"):
                    await far.get_session("snowhere.abcd-1")
        finally:
            for x in agents:
                x.stop()
            await asyncio.wait(tasks, timeout=30)

    asyncio.run(main())


def test_a_killed_node_s_session_applies_nothing_and_frees_its_locks(cluster: Cluster) -> None:
    import asyncio

    from mabeamd.client import AsyncClient, Conflict
    from tests.e2e.test_sessions import Scripted

    cluster.start("a", "b", workers=1, ttl=2)
    b = cluster.client("b")
    b.register("other")
    a_ep = cluster.nodes["a"].agent_endpoint

    async def main() -> None:
        voter = Scripted("mute", a_ep, {})  # never answers: the session waits for it
        task = asyncio.create_task(voter.run_async())
        c = AsyncClient(a_ep, timeout=15, heartbeat=False)
        await c.connect()
        try:
            await c.register("boss")
            await c.wait_for(1, capabilities=["p"])
            await c.create_var("boss", "held", "before")
            await c.start_session("boss", "consensus", participants=["mute"],
                                  variables=["held"], params={"proposal": "after"},
                                  deadline=30, wait=False)
            await asyncio.to_thread(wait, lambda: b.get_var("held", consistent=True))
            with pytest.raises(Conflict, match="locked by coordination session"):
                await asyncio.to_thread(b.set_var, "other", "held", "too soon")
            cluster.nodes["a"].signal(signal.SIGKILL)
            t0 = time.monotonic()
            got = await asyncio.to_thread(wait, lambda: b.set_var("other", "held", "from b"),
                                          20.0, "the lock freed by a's lease")
            # The worker's lease (TTL 2 s) runs out; and the session applied nothing.
            assert time.monotonic() - t0 <= 2 + 2.0
            assert got["version"] == 2
            final = await asyncio.to_thread(b.get_var, "held", consistent=True)
            assert final["value"] == "from b"
        finally:
            voter.stop()
            task.cancel()
            await asyncio.wait([task], timeout=5)

    asyncio.run(main())


def test_node_links_speak_curve_to_nodes_that_advertise_it(cluster: Cluster) -> None:
    import shutil

    from mabeamd.agents.auth import generate
    from mabeamd.testing import free_port

    keys = short_tmpdir()
    trusted, others = keys / "trusted", keys / "others"
    for d in (trusted, others):
        d.mkdir()
    for name in ("node-a", "node-b", "node-c"):
        public, _ = generate(keys, name)
        if name != "node-c":  # a and b trust each other; nobody trusts c
            shutil.copy(public, trusted)
        shutil.copy(public, others)

    def curve_node(node: str, authorized: Path) -> Daemon:
        port = free_port()
        cfg = (f'[agents]\nendpoints = ["ipc://{{run}}/agents.sock", '
               f'"curve+tcp://127.0.0.1:{port}"]\nshard_endpoint = "ipc://{{run}}/shard"\n'
               'heartbeat_interval = 0.2\ngone_after = 0.5\n'
               '[events]\nendpoint = "ipc://{run}/events.sock"\n'
               f'[security]\nserver_key = "{keys}/node-{node}.key_secret"\n'
               f'authorized_keys = "{authorized}"\n' + cluster.config(node)
               + f'advertise = "curve+tcp://127.0.0.1:{port}"\n')
        d = cluster.make(cfg, workers=1)
        d.start(timeout=60)
        cluster.nodes[node] = d
        return d

    curve_node("a", trusted)
    curve_node("b", others)
    curve_node("c", others)
    a, b, c = (cluster.client(n) for n in "abc")
    a.register("alice")
    b.register("bob")
    c.register("carol")
    wait(lambda: len(b.list_agents()["agents"]) == 3, what="every agent listed on b")
    assert b.send("bob", "alice", "over curve")["node"] == "a"  # b's key is a's trusted
    assert a.next_push(timeout=10).body["body"] == "over curve"
    assert a.send("alice", "carol", "to c")["node"] == "c"  # c trusts a's key
    # a does not trust c's key: the handshake is refused, nothing is delivered.
    with pytest.raises(MabeamError, match="did not take"):
        c.send("carol", "alice", "not over curve")
    with pytest.raises(Timeout):
        a.next_push(timeout=1)


def test_concurrent_compare_and_set_has_one_winner_per_version(cluster: Cluster) -> None:
    cluster.start("a", "b", "c", workers=1)
    clients = [cluster.client(n) for n in "abc"]
    for i, cl in enumerate(clients):
        cl.register(f"w{i}")
    clients[0].create_var("w0", "counter", 0)
    wins: list[list[int]] = [[] for _ in clients]
    errors: list[BaseException] = []

    def bump(i: int) -> None:
        cl = clients[i]
        try:
            while len(wins[i]) < 15:
                cur = cl.get_var("counter", consistent=True)
                try:
                    got = cl.set_var(f"w{i}", "counter", cur["value"] + 1,
                                     expect_version=cur["version"])
                except VersionMismatch:
                    continue
                wins[i].append(got["version"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    versions = sorted(v for w in wins for v in w)
    assert versions == list(range(2, 2 + 45))  # every version won exactly once
    final = clients[2].get_var("counter", consistent=True)
    assert final["value"] == 45 and final["version"] == 46


def test_node_refuses_a_taken_name_and_another_shard_count(cluster: Cluster) -> None:
    cluster.start("a")
    twin = cluster.make(cluster.config("a"), workers=2)
    twin.start(wait_ready=False)
    assert twin.wait(60) != 0
    assert "node name 'a' is taken" in twin.log()
    other = cluster.make(cluster.config("z"), workers=3)
    other.start(wait_ready=False)
    assert other.wait(60) != 0
    assert "runs 2 shards and this node 3" in other.log()
    assert "[workers] count = 2" in other.log()


def test_cluster_figures_are_in_metrics(cluster: Cluster) -> None:
    import urllib.request

    from mabeamd.testing import free_port

    port = free_port()
    node = cluster.make(cluster.config("m") + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
                        workers=1)
    node.start(timeout=60)
    cluster.nodes["m"] = node
    c = cluster.client("m")
    c.register("meter")
    for i in range(3):
        c.create_var("meter", f"m{i}", i)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    text = wait(lambda: (t := scrape()) and 'mabeamd_cluster_commits_total{shard="0"} 3.0' in t
                and t, what="3 commits in /metrics")
    assert 'mabeamd_cluster_watch_open{shard="0"} 1.0' in text
    assert "mabeamd_cluster_cache_revision" in text
    assert 'mabeamd_cluster_lease_state{state="ok"} 1.0' in text
    assert 'mabeamd_cluster_lease_state{state="lost"} 0.0' in text
    assert 'mabeamd_cluster_agents{where="here"} 1.0' in text
    # every etcd endpoint probed and up, exactly one of them the leader
    members = cluster.etcd.endpoints
    text = wait(lambda: (t := scrape()) and all(
        f'mabeamd_cluster_etcd_up{{endpoint="{e}"}} 1.0' in t for e in members) and t,
        what="every etcd endpoint up in /metrics")
    leaders = re.findall(r'mabeamd_cluster_etcd_leader\{endpoint="[^"]+"\} 1\.0', text)
    assert len(leaders) == 1, text


def test_mabeamctl_cluster_status(cluster: Cluster, daemon: Daemon) -> None:
    cluster.start("a", "b", workers=1)
    out = cluster.nodes["a"].ctl("--socket", str(cluster.nodes["a"].socket), "cluster",
                                 "status", "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert [n["node"] for n in st["nodes"]] == ["a", "b"]
    assert [n["events"] for n in st["nodes"]] == \
        [cluster.nodes[n].event_endpoint for n in "ab"]
    assert st["lease"]["state"] == "ok" and st["shards"] == 1
    assert len(st["members"]) == 3 and all(e["healthy"] for e in st["endpoints"])
    assert sum(e["is_leader"] for e in st["endpoints"]) == 1
    assert st["caches"][0]["watch"] is True
    text = cluster.nodes["b"].ctl("--socket", str(cluster.nodes["b"].socket), "cluster")
    assert text.returncode == 0, text.stderr
    assert "node b" in text.stdout and "ETCD ENDPOINT" in text.stdout
    # A single node says so, without a traceback.
    single = daemon.ctl("--socket", str(daemon.socket), "cluster", "status")
    assert single.returncode != 0
    assert "single node" in single.stderr and "Traceback" not in single.stderr


def test_a_client_fails_over_to_another_node_and_carries_on(cluster: Cluster) -> None:
    cluster.start("a", "b", workers=1)
    a, b = (cluster.nodes[n] for n in "ab")
    c = Client([a.agent_endpoint, b.agent_endpoint], timeout=3)
    cluster.clients.append(c)
    c.register("roamer", ["mobile"])
    c.create_var("roamer", "trip", 0)
    assert c.get_var("trip")["value"] == 0  # a's shared memory
    a.signal(signal.SIGKILL)
    # Heartbeats (0.2 s here) go unanswered; after two the client moves to b and registers
    # its agent there again; writes and reads carry on, the cache now b's.
    wait(lambda: c.aio.endpoint == b.agent_endpoint and c.aio.failovers == 1, timeout=20,
         what="the failover to b")
    got = wait(lambda: c.set_var("roamer", "trip", 1), timeout=20, what="a write through b")
    assert got["version"] == 2
    assert wait(lambda: c.get_var("trip")["value"] == 1, what="b's cache")
    other = cluster.client("b")
    assert wait(lambda: [x["id"] for x in other.list_agents()["agents"]] == ["roamer"],
                what="roamer listed on b")


def test_a_killed_node_leaves_the_cluster_within_its_lease(cluster: Cluster) -> None:
    cluster.start("a", "b", workers=1, ttl=2)
    b = cluster.client("b")
    b.register("bob")
    acked = [b.create_var("bob", f"k{i}", i)["version"] for i in range(20)]
    assert acked == [1] * 20
    a = cluster.client("a")
    wait(lambda: a.list_agents()["agents"], what="bob listed on a")
    cluster.nodes["b"].signal(signal.SIGKILL)
    t0 = time.monotonic()
    wait(lambda: live(cluster.status("a")) == ["a"] and not a.list_agents()["agents"],
         timeout=15, what="b and its agents gone from a's view")
    gone_after = time.monotonic() - t0
    assert gone_after <= 2 + 1.5, gone_after  # TTL + 1 s (and the poll's slack)
    for i in range(20):  # nothing b acknowledged is lost
        assert a.get_var(f"k{i}", consistent=True)["value"] == i


def test_a_leader_change_delays_noticing_a_dead_node_by_at_most_one_ttl(
        lonely_cluster: Cluster) -> None:
    """etcd's new leader gives every lease its full TTL again: a node that died just before
    the change is noticed up to one TTL later than otherwise (docs/cluster.md)."""
    cl = lonely_cluster
    ttl = 2
    cl.start("a", "b", workers=1, ttl=ttl, timeout=1.5)
    a = cl.client("a")
    a.register("alice")
    a.create_var("alice", "load", 0)
    stop = threading.Event()

    def load() -> None:  # writes under way through the leader change
        n = 0
        while not stop.is_set():
            n += 1
            with contextlib.suppress(MabeamError):
                a.set_var("alice", "load", n)

    writer = threading.Thread(target=load)
    writer.start()
    try:
        time.sleep(ttl / 2)
        cl.nodes["b"].signal(signal.SIGKILL)
        t0 = time.monotonic()
        cl.etcd.kill(cl.etcd.leader() or 0)
        wait(lambda: live(cl.status("a")) == ["a"], timeout=30, what="b gone after the change")
        took = time.monotonic() - t0
    finally:
        stop.set()
        writer.join(30)
    # At most the TTL left when the new leader took over (a full one) plus the election
    # plus the TTL b had left before: 2 x TTL + election. Measured 4.8-5.4 s on a quiet
    # machine; an election on this loaded 2-core VM took up to ~4 s (a full run saw 8.0 s).
    assert took <= 2 * ttl + 6, took
    assert a.set_var("alice", "load", "after")["value"] == "after"  # writes go on


def test_etcd_member_losses_one_is_survived_two_refuse_writes_then_resume(
        lonely_cluster: Cluster) -> None:
    cl = lonely_cluster
    cl.start("a", workers=1, timeout=1.5)
    a = cl.client("a")
    a.register("alice")
    a.create_var("alice", "x", 0)
    etcd = cl.etcd
    follower = next(i for i in range(3) if i != etcd.leader())
    etcd.kill(follower)
    for i in range(1, 21):  # one member down: the cluster keeps its quorum
        assert a.set_var("alice", "x", i)["version"] == i + 1
    second = next(i for i in range(3) if i != follower)
    etcd.kill(second)
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as refused:
        a.set_var("alice", "x", "lost?")
    took = time.monotonic() - t0
    assert took < 2 * 1.5 + 2.0, took  # two request timeouts at most (and slack): no hang
    assert refused.value.applied is None  # a timed-out write may still be committed later
    # Cached reads keep answering from this node's shared memory.
    assert a.get_var("x")["value"] == 20
    with pytest.raises(Unavailable):
        a.get_var("x", consistent=True)
    etcd.start_member(follower)
    etcd.start_member(second)
    etcd.wait_healthy(60)
    got = wait(lambda: a.set_var("alice", "x", "back"), timeout=30, what="writes resume")
    assert got["value"] == "back"
    final = a.get_var("x", consistent=True)
    assert final["value"] == "back" and final["version"] in (22, 23)  # "lost?" maybe applied


def test_a_hello_waiting_on_a_slow_directory_claim_is_not_reaped_as_silent(
        lonely_cluster: Cluster) -> None:
    """etcd paused for longer than the test agents' gone window (0.2 s x 3 + 0.5 s) while a
    hello waits on its directory claim: the agent could not heartbeat before its answer, so
    it must not be swept as gone (it was, and its hello was answered with a revoked
    credential: bench clients then met not_registered on their first write)."""
    cl = lonely_cluster
    cl.start("a", workers=1, timeout=8.0)
    events = Events(cl.nodes["a"].event_endpoint, "agent.")
    a = cl.client("a")
    done: list[Any] = []
    for i in range(3):
        cl.etcd.pause(i)
    try:
        t = threading.Thread(target=lambda: done.append(a.register("slowpoke")))
        t.start()
        time.sleep(2.0)  # the claim waits on etcd for the whole pause
    finally:
        for i in range(3):
            cl.etcd.resume(i)
    t.join(30)
    assert done and done[0]["agent"] == "slowpoke"
    a.create_var("slowpoke", "after-slow-claim", 1)  # its credential was not revoked
    assert a.set_var("slowpoke", "after-slow-claim", 2)["version"] == 2
    listed = cl.nodes["a"].call("agents.list")
    assert "slowpoke" in [r["id"] for r in listed["agents"]], listed
    events.close()
    gone = [body for topic, body in events.items if topic == "agent.gone"]
    assert not gone, gone


def test_a_partitioned_node_acknowledges_no_write_and_rejoins(
        lonely_cluster: Cluster) -> None:
    """Node b talks to one etcd member only; pausing that member cuts b off (it is there but
    answers nothing, as behind a partition) while a goes on with the other two."""
    cl = lonely_cluster
    etcd = cl.etcd
    cut = next(i for i in range(3) if i != etcd.leader())
    cl.start("a", workers=1, ttl=2, timeout=2.0)
    cl.start("b", workers=1, ttl=2, timeout=2.0, etcd=[etcd.members[cut].endpoint])
    a, b = cl.client("a"), cl.client("b")
    a.register("alice")
    b.register("bob")
    a.create_var("alice", "p", 0)
    etcd.pause(cut)
    try:
        with pytest.raises(Unavailable):
            b.set_var("bob", "p", "from b")
        assert a.set_var("alice", "p", "from a")["version"] == 2
        wait(lambda: live(cl.status("a")) == ["a"], timeout=15,
             what="b's lease expiring")
        assert cl.status("b")["lease"]["state"] in ("uncertain", "lost")
    finally:
        etcd.resume(cut)
    wait(lambda: live(cl.status("a")) == ["a", "b"], timeout=30,
         what="b rejoining")
    assert cl.status("b")["lease"]["state"] == "ok"
    assert b.get_var("p", consistent=True)["value"] == "from a"
    assert b.set_var("bob", "p", "b again")["version"] == 3


def test_histories_under_member_and_node_kills_are_linearizable(
        lonely_cluster: Cluster) -> None:
    cl = lonely_cluster
    cl.start("a", "b", workers=1, timeout=1.5, ttl=3)
    keys = ["h0", "h1", "h2"]
    seed = cl.client("a")
    seed.register("seed")
    for k in keys:
        seed.create_var("seed", k, 0)
    history: list[Op] = [Op(client="seed", key=k, kind="set", call=0.0, ret=0.0, arg=0,
                            expect=None, ok=True, value=None, version=1) for k in keys]
    lock = threading.Lock()
    stop = threading.Event()
    t_base = time.monotonic()

    def run(node: str, n: int) -> None:
        cl_ = Client(cl.nodes[node].agent_endpoint, timeout=5)
        agent = f"{node}{n}"
        cl_.register(agent)
        ops = 0
        try:
            while not stop.is_set() and ops < 400:
                ops += 1
                key = keys[(ops * 7 + n) % len(keys)]
                kind: Literal["get", "set", "cas"] = ("get", "set", "cas")[(ops + n) % 3]
                t0 = time.monotonic() - t_base
                op: Op
                sent: int | None = None
                try:
                    if kind == "get":
                        got = cl_.get_var(key, consistent=True)
                        op = Op(agent, key, "get", t0, time.monotonic() - t_base, None, None,
                                True, got["value"], got["version"])
                    elif kind == "set":
                        val = f"{agent}-{ops}"
                        got = cl_.set_var(agent, key, val)
                        op = Op(agent, key, "set", t0, time.monotonic() - t_base, val, None,
                                True, None, got["version"])
                    else:
                        cur = cl_.get_var(key, consistent=True)
                        val = f"{agent}-{ops}"
                        t0 = time.monotonic() - t_base
                        sent = cur["version"]  # the cas goes out now: record it either way
                        try:
                            got = cl_.set_var(agent, key, val, expect_version=cur["version"])
                            op = Op(agent, key, "cas", t0, time.monotonic() - t_base, val,
                                    cur["version"], True, None, got["version"])
                        except VersionMismatch:
                            op = Op(agent, key, "cas", t0, time.monotonic() - t_base, val,
                                    cur["version"], False, None, None)
                except MabeamError:
                    # No answer we can trust: a write may or may not have taken effect.
                    if kind == "get" or (kind == "cas" and sent is None):
                        continue  # a read, or a cas whose version read failed: never sent
                    op = Op(agent, key, kind, t0, None, f"{agent}-{ops}",
                            sent if kind == "cas" else None, None, None, None)
                with lock:
                    history.append(op)
        finally:
            cl_.close()

    threads = [threading.Thread(target=run, args=(node, n)) for node in "ab" for n in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    cl.etcd.kill(cl.etcd.leader() or 0)  # a leader change under load
    time.sleep(2.0)
    cl.nodes["b"].signal(signal.SIGKILL)  # and a node: its clients' writes go unanswered
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(60)
    done = [o for o in history if o.ret is not None]
    assert len(done) > 100, len(done)
    result = check(history)
    assert result.ok, result.explanation


def test_cluster_config_is_checked(tmp_path: Path) -> None:
    from mabeamd import config

    def load(text: str) -> None:
        p = tmp_path / "m.toml"
        p.write_text(text)
        config.load(p)

    with pytest.raises(config.ConfigError, match=r"node.*required with"):
        load('[cluster]\netcd = ["127.0.0.1:2379"]\n')
    with pytest.raises(config.ConfigError, match="HOST:PORT"):
        load('[cluster]\netcd = ["127.0.0.1"]\nnode = "a"\n')
    with pytest.raises(config.ConfigError, match="TLS"):
        load('[cluster]\netcd = ["https://127.0.0.1:2379"]\nnode = "a"\n')
    with pytest.raises(config.ConfigError, match="not on loopback"):
        load('[cluster]\netcd = ["10.1.2.3:2379"]\nnode = "a"\n')
    with pytest.raises(config.ConfigError, match="without \\[cluster\\] etcd"):
        load('[cluster]\nnode = "a"\n')
    with pytest.raises(config.ConfigError, match="node"):
        load('[cluster]\netcd = ["127.0.0.1:2379"]\nnode = "a b"\n')
    with pytest.raises(config.ConfigError, match="max_value"):
        load('[cluster]\netcd = ["127.0.0.1:2379"]\nnode = "a"\n'
             '[variables]\nmax_value = 2000000\n[agents]\nmax_message = 4000000\n')
    with pytest.raises(config.ConfigError, match="server_key and authorized_keys"):
        load('[cluster]\netcd = ["127.0.0.1:2379"]\nnode = "a"\n'
             'advertise = "curve+tcp://127.0.0.1:7700"\n')
    load('[cluster]\netcd = ["127.0.0.1:2379", "http://localhost:22379"]\nnode = "a"\n')


def test_scripts_cluster_starts_a_cluster_and_stops_it_all(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from mabeamd.testing import ROOT, run_ctl

    d = short_tmpdir() / "cl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "cluster.py"), "--nodes",
                             "2", "--workers", "1", "--dir", str(d)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={k: v for k, v in os.environ.items() if k != "MABEAM_SOCKET"})
    try:
        assert proc.stdout is not None
        out = []
        for line in proc.stdout:
            out.append(line)
            if "Ctrl-C stops the cluster" in line:
                break
        text = "".join(out)
        assert "cluster 'loopback' is up" in text, text
        st = run_ctl("--socket", str(d / "b" / "run" / "control.sock"), "cluster", "status",
                     "--json")
        assert st.returncode == 0, st.stderr
        assert [n["node"] for n in json.loads(st.stdout)["nodes"]] == ["a", "b"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    import psutil

    left = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
            if any(str(d) in a for a in (p.info["cmdline"] or []))]
    assert left == []
