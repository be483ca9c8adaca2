"""ZeroMQ socket set-up shared by every server socket of the daemon."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, TypeVar

import zmq

from mabeamd.addresses import Endpoint, parse_endpoint

S = TypeVar("S", bound="zmq.Socket[Any]")
AGENT_RCVHWM = 256  # messages queued per agent connection (see agent_router)


def router(ctx: zmq.Context[S], *, sndhwm: int, rcvhwm: int, linger: int) -> S:
    """A ROUTER that raises on unroutable replies (ROUTER_MANDATORY) instead of dropping them
    silently, with explicit high-water marks."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.LINGER, linger)
    return sock


def agent_router(ctx: zmq.Context[S], max_message: int) -> S:
    """A ROUTER facing agents (agent endpoints, shard endpoints): bounded messages and ZMTP
    heartbeats, so libzmq drops connections whose peer vanished without a FIN (host down,
    cable out) and frees their pipes; agents' liveness is a separate, application matter."""
    # The receive queue bounds what one connection can make the daemon buffer (messages of
    # up to MAXMSGSIZE each): 10,000 let a flood of big frames grow it by gigabytes. An
    # honest client has at most agents.max_in_flight (64) requests outstanding.
    sock = router(ctx, sndhwm=10000, rcvhwm=AGENT_RCVHWM, linger=0)
    # The request size limit is the application's: a frame over max_message is answered
    # too_large and its connection (with its other agents) lives on. libzmq's own limit,
    # which cuts the connection, only bounds what one frame can make the daemon buffer.
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * max_message + 4096)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 10_000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 30_000)
    return sock


def bind_private(sock: zmq.Socket[Any], path: Path, mode: int = 0o600) -> None:
    """Bind an ipc socket whose file never exists with looser permissions than `mode`."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # stale: callers hold the instance lock
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(f"ipc://{path}")
    finally:
        os.umask(old)
    os.chmod(path, mode)


def curve_server(sock: zmq.Socket[Any], keys: tuple[bytes, bytes] | None) -> None:
    """Make `sock` a CURVE server whose clients the ZAP handler (auth.py) admits."""
    assert keys is not None, "a curve+ endpoint needs [security] server_key"
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = keys
    sock.zap_domain = b"mabeamd"


def bind_endpoint(sock: zmq.Socket[Any], ep: Endpoint) -> None:
    """Bind a configured endpoint. Agent-facing ipc sockets are open to every local user,
    like the default loopback tcp port."""
    if ep.transport == "ipc":
        bind_private(sock, Path(ep.address[len("ipc://"):]), 0o666)
    else:
        sock.bind(ep.address)


def unlink_endpoint(ep: Endpoint) -> None:
    if ep.transport == "ipc":
        with contextlib.suppress(FileNotFoundError):
            Path(ep.address[len("ipc://"):]).unlink()


def shard_address(base: str, index: int) -> str:
    """Worker `index`'s address for a `[agents] shard_endpoint` value: tcp://HOST:PORT+index
    or ipc://PATH-index."""
    ep = parse_endpoint(base)
    if ep is None or ep.curve:
        raise ValueError(f"not a plain endpoint: {base!r}")
    if ep.transport == "ipc":
        return f"{ep.address}-{index}"
    host, _, port = ep.address[len("tcp://"):].rpartition(":")
    return f"tcp://{host}:{int(port) + index}"
