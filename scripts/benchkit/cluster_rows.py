"""Rows for cluster mode: three etcd members on loopback (`cluster/local.py` LocalEtcd, from
Debian's etcd) and three mabeamd nodes on them with one worker each (this machine has two
cores), measured against peers in the same run:

- aetcd straight to the same etcd cluster, through the same client set-up the nodes use
  (`cluster/etcd.py` client(): every member in one round-robin gRPC target), one sequential
  client process as on our side: a transaction comparing mod_revision then putting (what a
  cluster write is), a plain put, a linearizable get, and the same compare-and-set loop;
- a single-node daemon (no [cluster]) for the shared-memory read.

Every client runs in its own process (`load.run_clients`); repetitions of ours and of the
peer alternate, so that a drifting machine moves both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from benchkit import Row
from benchkit.cluster_clients import (
    BLOB,
    HISTORY,
    NAMES,
    NODES,
    RAW,
    CasJob,
    etcd_cas_client,
    etcd_client,
    etcd_lag_client,
    fill_client,
    lag_client,
    open_etcd,
    raw_watchers,
    sdk_cas_client,
    sdk_client,
)
from benchkit.load import CTX, run_clients
from benchkit.stats import percentile, pick_median_rep, spread, summary
from benchkit.var_rows import mabeam_client
from mabeamd.net import wire
from mabeamd.testing import Daemon, short_tmpdir

CLUSTER = "bench"  # [cluster] name: the nodes' keys are under /mabeamd/bench/

# Every row this module makes, for the "not run" rows when etcd or aetcd is missing.
SET = "cluster var set, acknowledged (SDK on node A)"
SET_PUT = "cluster var set vs a plain etcd put"
SET_WATCHED = "cluster var set vs raw etcd txn under the same watch fan-out"
CAS = "cluster CAS/s"
CACHED = "cluster cached read (SDK, shared memory, node A)"
CONSISTENT = "cluster consistent read (get_var consistent=True, node A)"
LAG_B = "cluster watch lag, write on A -> cached read on B"
LAG_C = "cluster watch lag, write on A -> cached read on C"
KEYS = "cluster etcd keys per variable"
BYTES = "cluster etcd bytes per variable, just created"
BYTES_FULL = f"cluster etcd bytes per variable, {HISTORY} past versions"
METRICS = (SET, SET_PUT, SET_WATCHED, CAS, CACHED, CONSISTENT, LAG_B, LAG_C, KEYS, BYTES,
           BYTES_FULL)


def why_not() -> str:
    """Why the cluster rows cannot run here ("" when they can)."""
    from mabeamd.cluster.local import etcd_binary

    if etcd_binary() is None:
        return "etcd not installed (Debian: apt-get install etcd-server; or set $MABEAM_ETCD)"
    try:
        import aetcd  # noqa: F401
    except ImportError:
        return "aetcd not installed (scripts/setup installs the cluster extra)"
    return ""


def not_run(why: str) -> list[Row]:
    return [Row(m, "-", status="not run", note=why) for m in METRICS]


class ClusterBench:
    """LocalEtcd (3 members), nodes a, b, c with one worker each, and a single-node daemon
    with one worker: started in __enter__, stopped in __exit__."""

    def __init__(self) -> None:
        from mabeamd.cluster.local import LocalEtcd

        self.etcd = LocalEtcd(short_tmpdir() / "etcd", size=3)
        self.nodes: dict[str, Daemon] = {}
        self.single: Daemon | None = None

    def config(self, node: str) -> str:
        etcd = ", ".join(f'"{e}"' for e in self.etcd.endpoints)
        return (f'[daemon]\nlog_level = "warning"\n[cluster]\netcd = [{etcd}]\n'
                f'node = "{node}"\nname = "{CLUSTER}"\n')

    def __enter__(self) -> ClusterBench:
        try:
            self.etcd.start()
            for n in NODES:
                self.nodes[n] = Daemon(self.config(n), workers=1).start(timeout=60)
            self.single = Daemon('[daemon]\nlog_level = "warning"\n', workers=1).start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for d in [*self.nodes.values(), *([self.single] if self.single else [])]:
            with contextlib.suppress(Exception):  # cleanup() kills what did not stop
                d.stop()
            d.cleanup()
        self.etcd.stop()

    def endpoint(self, node: str) -> str:
        return self.nodes[node].agent_endpoint

    def run(self, coro: Callable[[Any], Any]) -> Any:
        """Run coro(etcd client) in this process, on a fresh client of the whole cluster."""

        async def go() -> Any:
            etcd = open_etcd(self.etcd.endpoints)
            await etcd.connect()
            try:
                return await coro(etcd)
            finally:
                await etcd.close()

        return asyncio.run(go())


# --- rows ----------------------------------------------------------------------------------


def lat_row(metric: str, ours: list[list[float]], theirs: list[list[float]], peer: str,
             unit: str = "us", **kw: Any) -> Row:
    i, spr = pick_median_rep(ours)
    j, _ = pick_median_rep(theirs)
    p50, p95, p99 = summary(ours[i])
    peer50, peer95, peer99 = summary(theirs[j])
    extra = {"peer_p50": peer50, "peer_p95": peer95, "peer_p99": peer99,
             **kw.pop("extra", {})}
    return Row(metric, unit, p50=p50, p95=p95, p99=p99, spread=spr, samples=len(ours[i]),
               reps=len(ours), peer=peer, peer_value=peer95, ratio=p95 / peer95,
               extra=extra, **kw)


def _p95(reps: list[list[float]]) -> float:
    """The p95 of the repetition with the median p95 (the figure a row shows)."""
    return summary(reps[pick_median_rep(reps)[0]])[1]


def _p(values: list[float]) -> str:
    p50, p95, p99 = summary(values)
    return f"{p50:.3g} / {p95:.3g} / {p99:.3g}"


def cluster(n: int, reps: int, *, cas_seconds: float, lag_writes: int, variables: int,
            warmup: int = 200) -> list[Row]:
    """Every cluster row, on one etcd cluster and one set of nodes."""
    why = why_not()
    if why:
        return not_run(why)
    with ClusterBench() as cb:
        a = cb.endpoint("a")
        eps = cb.etcd.endpoints
        lat: dict[str, list[list[float]]] = {k: [] for k in
                                             ("set", "txn", "txnw", "put", "cget", "get",
                                              "shm", "single", "hop")}
        assert cb.single is not None
        for _ in range(reps):  # ours, then the peers, each repetition
            lat["set"].append(run_clients(sdk_client, [(a, "set", n, warmup)])[0])
            lat["txn"].append(run_clients(etcd_client, [(eps, "txn", n, warmup)])[0])
            lat["put"].append(run_clients(etcd_client, [(eps, "put", n, warmup)])[0])
            with raw_watchers(eps, len(NODES)):  # as the nodes' caches follow our keys
                lat["txnw"].append(run_clients(etcd_client, [(eps, "txn", n, warmup)])[0])
            lat["cget"].append(run_clients(sdk_client, [(a, "consistent", n, warmup)])[0])
            lat["get"].append(run_clients(etcd_client, [(eps, "get", n, warmup)])[0])
            lat["shm"].append(run_clients(mabeam_client, [(a, "shm", n, warmup)])[0])
            lat["single"].append(run_clients(
                mabeam_client, [(cb.single.agent_endpoint, "shm", n, warmup)])[0])
            # The hop alone: var.get over the wire on the single node (one worker).
            lat["hop"].append(run_clients(
                sdk_client, [(cb.single.agent_endpoint, "wire", n, warmup)])[0])
        record = cb.run(_record_size)
        version = cb.run(_etcd_version)
        rows = _latency_rows(lat, record, (n + warmup) // NAMES, version)
        rows.append(_cas_row(cb, reps, cas_seconds))
        rows += _lag_rows(cb, lag_writes, min(warmup, 20))
        rows += _cost_rows(cb, variables)
    return rows


async def _record_size(etcd: Any) -> int:
    """The etcd value of one variable the set rows wrote (its history full by now)."""
    from mabeamd.cluster.etcd import Keys

    got = await etcd.get_prefix(Keys(CLUSTER).root + b"vars/")
    sizes = [len(kv.value) for kv in got.kvs if b"/cbench/" in kv.key]
    return max(sizes) if sizes else 0


async def _etcd_version(etcd: Any) -> str:
    from importlib.metadata import version

    return f"etcd {(await etcd.status()).version}, aetcd {version('aetcd')}"


def _latency_rows(lat: dict[str, list[list[float]]], record: int, sets: int,
                  version: str) -> list[Row]:
    setup = (f"3 etcd members + 3 nodes x 1 worker on loopback ({version}), one client "
             "process, sequential")
    hop = summary(lat["hop"][pick_median_rep(lat["hop"])[0]])
    rows = [
        lat_row(SET, lat["set"], lat["txn"], "raw etcd txn (compare+put), aetcd",
                 goal="p95 <= 1.3x raw txn",
                 note=f"Client.set_var over the shard endpoint (ipc) -> worker -> one etcd "
                      f"txn (compare mod_revision, put) -> reply; {setup}. Same "
                      f"{len(BLOB)}-byte msgpack value both sides, but the cluster's etcd "
                      "value is the variable's whole state, which grows with each set to "
                      f"{HISTORY} past versions: {record:,} bytes after the {sets} sets of "
                      "each variable here (the peer puts the bare value)"),
        lat_row(SET_PUT, lat["set"], lat["put"], "raw etcd put (aetcd, no compare)",
                 note="the samples of the row above, against a plain put of the same value; "
                      f"the raw txn's p95 is {_p95(lat['txn']) / _p95(lat['put']):.2f}x the "
                      "put's"),
        lat_row(SET_WATCHED, lat["set"], lat["txnw"], "raw etcd txn while 3 aetcd watchers "
                "follow its keys",
                note="the samples of the first row, against the raw txn while three watcher "
                     "processes (one aetcd client each, unpacking every value) follow the "
                     "peer's keys: the watch fan-out every cluster write carries (each "
                     "node's cache watches the whole keyspace, the writing node's too). On "
                     "one 2-core host the three watchers' wake-ups compete for the CPU with "
                     "the etcd members and the writer; on separate hosts they would not, so "
                     "this row is what our own path adds (the hop to the worker, the "
                     "variable's state with its history as the value) and the first row "
                     "adds this machine's fan-out cost on top"),
        lat_row(CACHED, lat["shm"], lat["single"], "single-node shm read (same run, 1 worker)",
                 goal="p95 = single node", note="Client.get_var: the node's list-then-watch "
                 "cache in its shared-memory segment; peer: the same client code on a "
                 "daemon without [cluster]"),
        lat_row(CONSISTENT, lat["cget"], lat["get"], "raw etcd get (aetcd, linearizable)",
                 note="var.get consistent=True: client -> worker -> etcd range (linearizable: "
                      "the member confirms its leader's commit index) -> reply. The hop to "
                      "the worker alone (get_var(local=False) on the single node, same run): "
                      f"{hop[0]:,.0f} / {hop[1]:,.0f} / {hop[2]:,.0f} us",
                 extra={"hop_p50": hop[0], "hop_p95": hop[1], "hop_p99": hop[2]}),
    ]
    return rows


def _cas_row(cb: ClusterBench, reps: int, seconds: float, threads: int = 2,
             nkeys: int = 4) -> Row:
    from mabeamd.client import Client

    loops = threads * len(NODES)
    ours: list[tuple[int, int, int]] = []
    theirs: list[tuple[int, int, int]] = []
    checks: list[str] = []
    with Client(cb.endpoint("a")) as c:
        c.register("cas-setup")
        for rep in range(reps):
            names = [f"cas/{rep}/{k}" for k in range(nkeys)]
            for name in names:
                c.create_var("cas-setup", name, 0)
            barrier = CTX.Barrier(len(NODES))
            got = run_clients(sdk_cas_client, [
                (cb.endpoint(node), CasJob(names, [], threads, seconds, rep * 10 + i), barrier)
                for i, node in enumerate(NODES)])
            ours.append(_sum(got))
            total = sum(c.get_var(name, consistent=True)["value"] for name in names)
            if total != ours[-1][0]:
                checks.append(f"rep {rep}: {ours[-1][0]} won but the counters add up to "
                              f"{total}")
            keys = [RAW + b"cas/%d/%d" % (rep, k) for k in range(nkeys)]
            cb.run(partial(_put_all, keys=keys, value=wire.pack(0)))
            barrier = CTX.Barrier(len(NODES))
            got = run_clients(etcd_cas_client, [
                (cb.etcd.endpoints, CasJob([], keys, threads, seconds, rep * 10 + i), barrier)
                for i in range(len(NODES))])
            theirs.append(_sum(got))
            total = cb.run(partial(_sum_all, keys=keys))
            if total != theirs[-1][0]:
                checks.append(f"peer rep {rep}: {theirs[-1][0]} won but the counters add up "
                              f"to {total}")
    rates = [w / seconds for w, _, _ in ours]
    peer_rates = [w / seconds for w, _, _ in theirs]
    mid = sorted(range(reps), key=lambda i: rates[i])[reps // 2]
    pmid = sorted(range(reps), key=lambda i: peer_rates[i])[reps // 2]
    won, lost, errors = ours[mid]
    pwon, plost, _ = theirs[pmid]
    check = "; CHECK FAILED: " + ", ".join(checks) if checks else \
        "; every counter's final value (consistent read) = the CAS won on it"
    return Row(f"{CAS} ({loops} client threads on {len(NODES)} nodes, {nkeys} keys)",
               "CAS/s", rate=rates[mid], spread=spread(rates), reps=reps,
               peer="raw etcd CAS loop (aetcd txns, same loops)",
               peer_value=peer_rates[mid], ratio=rates[mid] / peer_rates[mid],
               note=f"{seconds:g} s per repetition; a loop: cached read, set_var with "
                    f"expect_version; conflicts {lost / seconds:,.0f}/s "
                    f"({lost / max(1, won + lost):.0%} of tries), {errors} other errors; "
                    f"peer: {threads} tasks x {len(NODES)} procs, one aetcd client each, "
                    f"compare on a cached mod_revision: conflicts {plost / seconds:,.0f}/s "
                    f"({plost / max(1, pwon + plost):.0%}){check}",
               extra={"ours": ours, "peer": theirs, "checks": checks})


def _sum(results: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    return (sum(r[0] for r in results), sum(r[1] for r in results),
            sum(r[2] for r in results))


async def _put_all(etcd: Any, keys: list[bytes], value: bytes) -> None:
    for k in keys:
        await etcd.put(k, value)


async def _sum_all(etcd: Any, keys: list[bytes]) -> int:
    total = 0
    for k in keys:
        total += wire.unpack((await etcd.get(k)).value)
    return total


def _lag_rows(cb: ClusterBench, writes: int, warmup: int) -> list[Row]:
    got = run_clients(lag_client, [([cb.endpoint(n) for n in NODES], writes, warmup)])[0]
    # The peer: two aetcd watchers (processes of their own, as nodes B and C) of a key an
    # aetcd writer puts.
    barrier = CTX.Barrier(3)
    job = (RAW + b"lag/%d" % os.getpid(), warmup + writes)
    raw = run_clients(etcd_lag_client, [("write", cb.etcd.endpoints, job, barrier),
                                        ("watch", cb.etcd.endpoints, job, barrier),
                                        ("watch", cb.etcd.endpoints, job, barrier)])
    acks = next(t for role, t in raw if role == "write")
    watchers = [t for role, t in raw if role == "watch"]
    rows = []
    for k, (node, metric) in enumerate((("b", LAG_B), ("c", LAG_C))):
        ms = got["after_ack"][node]
        p50, p95, p99 = summary(ms)
        seen = watchers[k]
        peer = [(seen[i] - acks[i]) / 1e6 for i in range(warmup, warmup + writes) if i in seen]
        if len(peer) < writes:
            raise RuntimeError(f"the raw watcher saw {len(peer)} of {writes} puts")
        peer95 = percentile(peer, 95)
        rows.append(Row(metric, "ms", p50=p50, p95=p95, p99=p99, samples=len(ms), reps=1,
                        peer="raw etcd watch (aetcd watcher process, aetcd puts)",
                        peer_value=peer95, ratio=p95 / peer95 if peer95 > 0 else None,
                        note=f"{len(ms)} writes one at a time; from A's reply to the first "
                             f"read on {node.upper()} showing the version (one client process "
                             "with an SDK Client on each of B and C reads both nodes' shared "
                             "memory in turn, in a tight loop): etcd's watch to the node's "
                             "worker, its cache and segment. From before the set "
                             "(p50/p95/p99): "
                             f"{_p(got['after_send'][node])} ms; the set itself: "
                             f"{_p(got['ack'])} ms. Peer: from the put's reply to the "
                             f"event in a watcher process, p50/p95/p99 {_p(peer)} ms (it can "
                             "be below 0: the event may come before the reply)",
                        extra={"after_send_p95": percentile(got["after_send"][node], 95)}))
    return rows


def _cost_rows(cb: ClusterBench, count: int, refill: int = 10) -> list[Row]:
    from mabeamd.cluster.etcd import Keys

    keys = Keys(CLUSTER)

    async def db_size(etcd: Any) -> list[int]:
        sizes = []
        for e in cb.etcd.endpoints:  # each member's own file
            one = open_etcd([e])
            await one.connect()
            sizes.append(int((await one.status()).db_size))
            await one.close()
        return sizes

    async def usage(etcd: Any) -> dict[str, list[tuple[int, int]]]:
        got = await etcd.get_prefix(keys.root + b"vars/")
        out: dict[str, list[tuple[int, int]]] = {"cost": [], "full": []}
        for kv in got.kvs:
            name = kv.key.rsplit(b"/", 2)
            kind = name[-2].decode() if len(name) == 3 else ""
            if kind in out:
                out[kind].append((len(kv.key), len(kv.value)))
        return out

    before = cb.run(db_size)
    t0 = time.monotonic()
    run_clients(fill_client, [(cb.endpoint("a"), count, 0)], timeout=600)
    took = time.monotonic() - t0
    after = cb.run(db_size)
    run_clients(fill_client, [(cb.endpoint("a"), 0, refill)], timeout=600)
    found = cb.run(usage)
    cost, full = found["cost"], found["full"]
    if len(cost) != count or len(full) != refill:
        raise RuntimeError(f"etcd holds {len(cost)} of the {count} variables created and "
                           f"{len(full)} of {refill}")
    bare = len(keys.var(0, f"cost/{count // 2}")) + len(BLOB)  # the same key and value, raw
    per = sum(k + v for k, v in cost) / count
    per_full = sum(k + v for k, v in full) / refill
    grown = [(b - a) / count for a, b in zip(before, after, strict=True)]
    return [
        Row(f"{KEYS} ({count:,} variables)", "keys", rate=len(cost) / count, samples=1,
            reps=1, note=f"keys under /mabeamd/{CLUSTER}/vars/ (aetcd get_prefix) after "
                         f"{count:,} SDK creates on node A ({count / took:,.0f} creates/s, "
                         "one at a time); plus 1 config key per cluster and 1 membership "
                         "key per node"),
        Row(f"{BYTES} ({count:,} variables)", "B", rate=per, samples=1, reps=1,
            peer="the same key + the bare value", peer_value=bare, ratio=per / bare,
            note=f"key + value bytes as etcd returns them; the value is the variable's whole "
                 f"state (value {len(BLOB)} B, metadata, writer node) in msgpack. etcd's "
                 f"db file grew {min(grown):,.0f}-{max(grown):,.0f} B per variable on the 3 "
                 "members over the creates (bbolt pages and MVCC revisions, uncompacted; "
                 "coarse)"),
        Row(f"{BYTES_FULL} ({refill} variables, {HISTORY + 1} sets each)", "B",
            rate=per_full, samples=1, reps=1, peer="the same key + the bare value",
            peer_value=bare, ratio=per_full / bare,
            note=f"[variables] history = {HISTORY} (the default): each write puts the value "
                 "and its past versions again, so each etcd write and each revision etcd keeps "
                 "until compaction carries them all"),
    ]
