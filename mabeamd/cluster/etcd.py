"""The etcd connection both processes use, the cluster's keyspace, and etcd's failures as
the wire's `unavailable`.

Why aetcd: it is the maintained asyncio client for the etcd v3 gRPC API (grpc.aio), and it
was checked against the real server here for what cluster mode needs -- transactions with
compare on mod_revision and a read in the failure branch, lease grant / keepalive / info,
watch from a given revision, member list and status -- under uvloop. It connects to one
gRPC target; we give it every member at once (`ipv4:` with a comma list and round_robin),
so gRPC itself skips a member that is down and a single dead member costs one failed request
(which the callers here retry when that is safe), not a reconnect.

The keyspace, under /mabeamd/NAME/ (NAME: `[cluster] name`):
    config              the cluster's fixed settings (the shard count), created by its first node
    nodes/NODE          a live node's membership record, on the node's lease
    vars/SHARD/NAME     one variable: its whole state (value, metadata, history) as msgpack
    locks/SHARD/NAME    the coordination session holding the variable, on its worker's lease
    agents/ID           an agent's directory entry, on its node's lease (cluster/directory.py)
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import aetcd
import aetcd.exceptions
import grpc.aio

from mabeamd.net.wire import ErrorCode, WireError

T = TypeVar("T")

# The failures that mean "etcd did not answer" (as opposed to a refusal of the request). The
# last, aetcd's base class, is what it raises for gRPC codes it does not map (UNKNOWN,
# CANCELLED, ...: seen with a quorum lost mid-request); a refusal of the request itself
# (INVALID_ARGUMENT, e.g. too large) is its subclass INVALID, caught before DOWN where it can
# happen.
INVALID: Final = aetcd.exceptions.InvalidArgumentError
DOWN: Final = (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError,
               aetcd.exceptions.InternalError, TimeoutError, aetcd.exceptions.ClientError,
               # raw, from the calls aetcd does not wrap (members(): seen with a member paused)
               grpc.aio.AioRpcError)


def target(endpoints: Sequence[str]) -> tuple[str, int]:
    """aetcd's (host, port) such that its f"{host}:{port}" is a gRPC target naming every
    member at once: "ipv4:H1:P1,H2:P2,..." (names resolved now, once: gRPC's ipv4/ipv6
    schemes take addresses). Endpoints are HOST:PORT or http://HOST:PORT (the config checks)."""
    addrs: list[str] = []
    families = set()
    for e in endpoints:
        host, _, port = e.removeprefix("http://").rpartition(":")
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            ip = ipaddress.ip_address(info[0][4][0])
        families.add(ip.version)
        addrs.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    if len(families) > 1:
        raise ValueError("[cluster] etcd mixes IPv4 and IPv6 endpoints; give one family")
    host, _, port = addrs[-1].rpartition(":")
    return f"ipv{families.pop()}:" + ",".join([*addrs[:-1], host]), int(port)


def client(endpoints: Sequence[str], timeout: float) -> aetcd.Client:
    """A client of the whole etcd cluster. `timeout` bounds each request (not a watch)."""
    host, port = target(endpoints)
    return aetcd.Client(host=host, port=port, timeout=timeout,
                        options={"grpc.lb_policy_name": "round_robin",
                                 "grpc.max_receive_message_length": 64 << 20,
                                 # A member that holds its connections but answers nothing
                                 # (paused, or partitioned behind a live TCP path) is dropped
                                 # from the rotation after these two; 5 s is the least etcd's
                                 # --grpc-keepalive-min-time accepts by default.
                                 "grpc.keepalive_time_ms": 5_000,
                                 "grpc.keepalive_timeout_ms": 2_000,
                                 "grpc.keepalive_permit_without_calls": 1})


async def keepalive(etcd: aetcd.Client, lease_id: int, ttl: float) -> int:
    """Refresh a lease; its remaining TTL (<= 0: expired). A try waits at most a quarter of
    the TTL and a failed one is tried again at once on the next member (round_robin), up to
    three times: a member that holds its connections but does not answer must not cost a
    node its lease while the other members answer."""
    for i in range(3):
        try:
            reply = await asyncio.wait_for(etcd.refresh_lease(lease_id), max(0.2, ttl / 4))
            return int(reply.TTL)
        except DOWN:
            if i == 2:
                raise
    raise AssertionError("unreachable")


async def idempotent(call: Callable[[], Awaitable[T]], attempts: int) -> T:
    """A read (or a request that is safe to repeat) tried up to `attempts` times: with
    round_robin each try goes to the next member, so one member that does not answer costs
    a request timeout, not the request."""
    for i in range(attempts):
        try:
            return await call()
        except DOWN:
            if i + 1 >= attempts:
                raise
    raise AssertionError("attempts must be at least 1")


def refused(exc: BaseException, what: str) -> WireError:
    """etcd refused the request itself (INVALID_ARGUMENT: too large, too many operations)."""
    return WireError(ErrorCode.TOO_LARGE, f"etcd refused {what}: {exc}; nothing was changed")


def unavailable(exc: BaseException, what: str, *, applied: bool | None = False) -> WireError:
    """etcd's failure as the wire error. `applied`: False when nothing can have changed,
    None when a write may still be committed."""
    why = "did not answer in time" if isinstance(
        exc, (aetcd.exceptions.ConnectionTimeoutError, TimeoutError)) else f"failed: {exc}"
    if applied is None:
        tail = ("it may or may not have been applied: read it back (consistent) before "
                "sending it again")
    else:
        tail = "nothing was changed"
    return WireError(ErrorCode.UNAVAILABLE, f"etcd {why} ({what}); {tail}",
                     details={"applied": False if applied is False else "unknown"})


class Keys:
    """The cluster's keys (module docstring), as bytes."""

    def __init__(self, cluster: str) -> None:
        self.root = f"/mabeamd/{cluster}/".encode()
        self.config = self.root + b"config"
        self.nodes = self.root + b"nodes/"

    def node(self, name: str) -> bytes:
        return self.nodes + name.encode()

    def shard(self, index: int) -> bytes:
        return self.root + b"vars/%d/" % index

    def var(self, index: int, name: str) -> bytes:
        return self.shard(index) + name.encode()

    def lock(self, index: int, name: str) -> bytes:
        return self.root + b"locks/%d/" % index + name.encode()


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with `prefix` (etcd's convention)."""
    return aetcd.utils.prefix_range_end(prefix)  # type: ignore[no-any-return]


def kv_map(kv: Any) -> dict[str, Any]:
    return {"key": kv.key.decode(), "mod_revision": kv.mod_revision,
            "create_revision": kv.create_revision, "lease": kv.lease}
