"""One agent flooding a daemon: its own process (in the measuring one, its GIL would delay
the victim), one connection, one agent, sending var.set open loop at RATE per second
whatever the replies say, reading them only to keep its queue from filling. Prints
"flooding" once registered. Used by scripts/bench's rate-limit row and
tests/e2e/test_rate_limits.py.

    python scripts/benchkit/flooder.py ENDPOINT AGENT RATE
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import zmq

from mabeamd.net import wire

PATH = Path(__file__)


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
