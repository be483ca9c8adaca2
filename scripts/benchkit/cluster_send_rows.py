"""Rows for agent.send in cluster mode, on cluster_rows' set-up (3 etcd members on loopback,
nodes a, b, c with one worker each, and a single-node daemon without [cluster]):

- across nodes: the sender registered on node A, the receiver on node B, so A's agent
  endpoint hands the message over its node link to B (node.deliver), which pushes it;
- same node: sender and receiver both on node A (the directory's lookup, no link);
- the peer: sender and receiver on the single-node daemon, same client code.

One client process per measurement, with one SDK Client per agent (each on its agent's
node); a sample is from the send() call to the receiver's next_push() returning that
message, one message at a time. Repetitions of the three alternate.
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchkit import Row
from benchkit.cluster_rows import ClusterBench, lat_row, why_not
from benchkit.load import run_clients
from benchkit.stats import pick_median_rep, summary

ACROSS = "cluster agent.send, across nodes (sender on A, receiver on B)"
SAME = "cluster agent.send, same node (sender and receiver on A)"
METRICS = (ACROSS, SAME)
PEER = "single-node agent.send (same run, 1 worker)"
BODY = {"price": 3, "item": "apples", "qty": 10}


def send_client(sender_ep: str, receiver_ep: str, n: int, warmup: int, out: Any) -> None:
    """Register a receiver on receiver_ep and a sender on sender_ep (an SDK Client each),
    wait until the sender's node knows the receiver, then send one message at a time and
    wait for its push. Puts {"push": us from send() to next_push() returning, "reply": us
    from send() to its reply}."""
    from mabeamd.client import Client

    tag = f"sbench-{os.getpid()}"
    receiver, sender = Client(receiver_ep), Client(sender_ep)
    try:
        receiver.register(f"{tag}-rx")
        sender.register(f"{tag}-tx")
        deadline = time.monotonic() + 20
        while True:  # another node's agent is known once A's directory watch brought it
            try:
                sender.get_agent(f"{tag}-rx")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        push_lat: list[float] = []
        reply_lat: list[float] = []
        for i in range(warmup + n):
            t0 = time.perf_counter_ns()
            sender.send(f"{tag}-tx", f"{tag}-rx", {**BODY, "i": i}, topic="bench")
            t1 = time.perf_counter_ns()
            push = receiver.next_push(timeout=10)
            t2 = time.perf_counter_ns()
            if push.op != "message" or push.body["body"].get("i") != i:
                raise RuntimeError(f"message {i}: got push {push.op} {push.body!r}")
            if i >= warmup:
                push_lat.append((t2 - t0) / 1000)
                reply_lat.append((t1 - t0) / 1000)
    finally:
        sender.close()
        receiver.close()
    out.put({"push": push_lat, "reply": reply_lat})


def send_rows(n: int, reps: int, warmup: int = 50) -> list[Row]:
    why = why_not()
    if why:
        return [Row(m, "-", status="not run", note=why) for m in METRICS]
    lat: dict[str, list[list[float]]] = {k: [] for k in ("across", "same", "single")}
    reply: dict[str, list[list[float]]] = {k: [] for k in lat}
    with ClusterBench() as cb:
        assert cb.single is not None
        a, b, single = cb.endpoint("a"), cb.endpoint("b"), cb.single.agent_endpoint
        for _ in range(reps):
            for key, (tx, rx) in (("across", (a, b)), ("same", (a, a)),
                                  ("single", (single, single))):
                got = run_clients(send_client, [(tx, rx, n, warmup)])[0]
                lat[key].append(got["push"])
                reply[key].append(got["reply"])

    def rep_text(key: str) -> str:
        p50, p95, p99 = summary(lat[key][pick_median_rep(lat[key])[0]])
        r50, r95, r99 = summary(reply[key][pick_median_rep(reply[key])[0]])
        return (f"push {p50:,.0f} / {p95:,.0f} / {p99:,.0f} us, send()'s reply "
                f"{r50:,.0f} / {r95:,.0f} / {r99:,.0f} us")

    setup = ("3 etcd members + 3 nodes x 1 worker on loopback; one client process with an "
             "SDK Client per agent, one message at a time")
    extra = {f"reply_{k}_p95": summary(reply[k][pick_median_rep(reply[k])[0]])[1]
             for k in reply}
    return [
        lat_row(ACROSS, lat["across"], lat["single"], PEER, goal="p95 <= 2x single node",
                note=f"from send() on A to B's push reaching next_push(): A's agent endpoint "
                     f"-> node link (node.deliver) -> B pushes; {setup}. Across: "
                     f"{rep_text('across')}; single node: {rep_text('single')}",
                extra=extra),
        lat_row(SAME, lat["same"], lat["single"], PEER,
                note=f"the same on node A alone (the directory's lookup and the cluster "
                     f"node's own path, no link): {rep_text('same')}", extra=extra),
    ]
