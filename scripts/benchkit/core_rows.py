"""Rows for the daemon core: control round trip and rate (against the raw pyzmq floor),
start-to-READY, and worker restart latency after kill -9."""

from __future__ import annotations

import os
import signal
import time

from benchkit import Row
from benchkit.load import EchoPeer, latency_client, rate_client, run_clients
from benchkit.stats import pick_median_rep, spread, summary
from mabeamd.testing import Daemon, short_tmpdir

BENCH_CONFIG = """
[daemon]
log_level = "warning"
[workers]
count = 2
"""


def _latency_reps(endpoint: str, n: int, reps: int) -> list[list[float]]:
    return [run_clients(latency_client, [(endpoint, "ping", n, 200)])[0] for _ in range(reps)]


def control_latency(daemon: Daemon, n: int, reps: int) -> Row:
    ours = _latency_reps(f"ipc://{daemon.socket}", n, reps)
    peer_dir = short_tmpdir()
    with EchoPeer(f"ipc://{peer_dir / 'echo.sock'}") as peer:
        theirs = _latency_reps(peer.endpoint, n, reps)
    i, spr = pick_median_rep(ours)
    j, _ = pick_median_rep(theirs)
    p50, p95, p99 = summary(ours[i])
    peer_p95 = summary(theirs[j])[1]
    return Row("control round trip (ping, ipc)", "us", p50=p50, p95=p95, p99=p99, spread=spr,
               samples=n, reps=reps, peer="raw pyzmq ROUTER echo + msgpack",
               peer_value=peer_p95, ratio=p95 / peer_p95,
               note="one client process, sequential; ratio = our p95 / floor p95")


def _rate_reps(endpoint: str, procs: int, seconds: float, reps: int) -> list[float]:
    rates = []
    for _ in range(reps):
        res = run_clients(rate_client, [(endpoint, "ping", seconds, 32)] * procs)
        rates.append(sum(done for done, _ in res) / seconds)
    return rates


def control_rate(daemon: Daemon, seconds: float, reps: int) -> Row:
    procs = 2
    ours = _rate_reps(f"ipc://{daemon.socket}", procs, seconds, reps)
    peer_dir = short_tmpdir()
    with EchoPeer(f"ipc://{peer_dir / 'echo.sock'}") as peer:
        theirs = _rate_reps(peer.endpoint, procs, seconds, reps)
    mid = sorted(ours)[len(ours) // 2]
    peer_mid = sorted(theirs)[len(theirs) // 2]
    return Row(f"control requests/s ({procs} procs x 32 in flight)", "ops/s", rate=mid,
               spread=spread(ours), reps=reps, peer="raw pyzmq ROUTER echo + msgpack",
               peer_value=peer_mid, ratio=mid / peer_mid,
               note=f"{seconds:g} s per repetition; the admin path (one task per request), "
                    "not the agent path")


def start_to_ready(n: int, reps: int) -> Row:
    per_rep: list[list[float]] = []
    for _ in range(reps):
        times = []
        for _ in range(n):
            d = Daemon(BENCH_CONFIG, raw_config=True)
            try:
                t0 = time.monotonic()
                d.start(wait_ready=False)
                msg = d.wait_ready(30)
                times.append((float(msg["_t"]) - t0) * 1000)
                d.stop()
            finally:
                d.cleanup()
        per_rep.append(times)
    i, spr = pick_median_rep(per_rep)
    p50, p95, p99 = summary(per_rep[i])
    return Row("start to READY=1 (2 workers)", "ms", p50=p50, p95=p95, p99=p99, spread=spr,
               samples=n, reps=reps, note="exec of `python -m mabeamd` to the sd_notify READY "
               "datagram; includes interpreter start-up")


def restart_latency(n: int, reps: int) -> Row:
    """kill -9 a worker; time until the daemon reports it running again (STATUS= datagram)."""
    per_rep: list[list[float]] = []
    # Kills alternate between the two workers, each >= 0.3 s apart, so with a 0.1 s window
    # every measured restart is the first of its window: the default first-restart delay.
    d = Daemon(BENCH_CONFIG + "max_restarts = 100000\nrestart_window = 0.1\n", raw_config=True)
    try:
        d.start()
        assert d.notify is not None
        for _ in range(reps):
            times = []
            for k in range(n):
                pid = d.workers()[k % 2]["pid"]
                start = len(d.notify.messages)
                t0 = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                d.notify.wait_for(lambda m: m.get("STATUS") == "1/2 workers running",
                                  start=start)
                msg = d.notify.wait_for(lambda m: m.get("STATUS") == "2/2 workers running",
                                        start=start)
                times.append((float(msg["_t"]) - t0) * 1000)
            per_rep.append(times)
        d.stop()
    finally:
        d.cleanup()
    i, spr = pick_median_rep(per_rep)
    p50, p95, p99 = summary(per_rep[i])
    return Row("worker restart after kill -9", "ms", p50=p50, p95=p95, p99=p99, spread=spr,
               samples=n, reps=reps, goal="< 1000",
               note="kill to the replacement's hello; includes the default first-restart "
                    "delay (backoff_initial 0.1 s +/-20%)")
