"""One agent flooding a daemon: its own process (in the measuring one, its GIL would delay
the victim), one connection, one agent, sending var.set open loop at RATE per second
whatever the replies say, reading them only to keep its queue from filling. Prints
"flooding" once registered. Used by scripts/bench's rate-limit row and
tests/e2e/test_rate_limits.py.

    python scripts/benchkit/flooder.py ENDPOINT AGENT RATE
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from mabeamd.net import wire

PATH = Path(__file__)


def refused(daemon: Any) -> int:
    """The daemon's rate_limited count (daemon: a mabeamd.testing.Daemon)."""
    return int(daemon.call("status")["agent_traffic"]["rate_limited"])


@contextlib.contextmanager
def flooding(daemon: Any, agent: str, rate: float) -> Iterator[subprocess.Popen[str]]:
    """This script in a process of its own at nice 19, flooding `daemon` as `agent`; entered
    once the daemon refuses the flood (100 refusals), ended by SIGTERM. Niced: what is
    measured is the daemon's isolation -- what the flood costs others through it -- not the
    kernel sharing two cores between the flooder and the victim (a flooder on another host
    costs this one nothing but the daemon's own work)."""
    proc = subprocess.Popen([sys.executable, str(PATH), daemon.agent_endpoint, agent,
                             str(rate)], stdout=subprocess.PIPE, text=True)
    try:
        os.setpriority(os.PRIO_PROCESS, proc.pid, 19)
        assert proc.stdout is not None and proc.stdout.readline() == "flooding\n"
        mark = refused(daemon)
        daemon.wait_until(lambda: refused(daemon) > mark + 100, what="the flood refused")
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def main(endpoint: str, agent: str, rate: float) -> None:
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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
