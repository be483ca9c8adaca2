"""The node's place in the cluster, held by the arbiter: its etcd lease and membership key,
the cluster's fixed settings, and the cluster's status for `mabeamctl cluster status`.

Liveness is the lease: the node's membership key (and, as they come, its agents' directory
entries and its sessions' locks) is attached to one lease that the arbiter keeps alive every
third of its TTL. A node that dies stops the keepalives and etcd deletes all of it when the
TTL runs out -- no sweeper, no home-made failure detector. etcd's leader resets every lease's
remaining TTL when leadership changes (a new leader cannot know how long ago the last
keepalive reached the old one), so a node that dies during a leader change is noticed up to
one TTL later than otherwise: docs/cluster.md counts that in the failure-detection time.

A lease this node can no longer refresh (etcd unreachable past the TTL) is lost: its keys are
gone for the others. When etcd answers again the node takes a new lease and writes its key
again; meanwhile `status` says "lost". Variable writes never depend on the lease (each is an
etcd transaction of its own), so a partitioned node cannot acknowledge a write etcd did not
commit: no split brain by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import msgpack

from mabeamd import __version__
from mabeamd.cluster.etcd import DOWN, Keys, client, idempotent, keepalive
from mabeamd.schema import ClusterSection

log = logging.getLogger(__name__)
PROBE_EVERY = 5.0  # seconds between status probes of each etcd endpoint (for /metrics)


class ClusterError(Exception):
    """The node cannot join: the message says why and what to change."""


class Membership:
    def __init__(self, cfg: ClusterSection, *, shards: int, advertise: str,
                 agent_endpoints: list[str], curve_key: str | None = None,
                 events_endpoint: str | None = None) -> None:
        """`curve_key`: this node's CURVE public key (z85), for a curve+ advertise address:
        the other nodes' links check the server they reach is this one."""
        self.cfg = cfg
        self.keys = Keys(cfg.name)
        self.shards = shards
        self.etcd = client(cfg.etcd, cfg.request_timeout)
        self.record = {"node": cfg.node, "advertise": advertise, "agents": agent_endpoints,
                       "events": events_endpoint,
                       "host": socket.gethostname(), "pid": os.getpid(),
                       "version": __version__, "started": time.time(), "shards": shards,
                       "curve_key": curve_key}
        self.lease_id: int | None = None
        self.state = "starting"  # then "ok", "uncertain" (keepalives failing), "lost"
        self.last_keepalive = 0.0  # monotonic time of the last one etcd confirmed
        self.leases_granted = 0
        # The cluster's shared secret (in its config key): node-to-node requests carry it.
        # Whoever may read etcd may act as a node; over plain TCP it is as safe as the wire.
        self.token = ""
        self.on_rejoin: list[Callable[[], None]] = []  # told of each new lease after a loss
        self._task: asyncio.Task[None] | None = None
        # Each etcd endpoint's latest answer to a status probe (every PROBE_EVERY s), for
        # /metrics: a scrape must not wait on etcd, so it reads these.
        self.health: dict[str, dict[str, Any]] = {}
        self._probe_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Join: check the cluster's settings (or set them, as its first node), take the
        lease and write the membership key. Raises ClusterError."""
        deadline = time.monotonic() + max(3 * self.cfg.request_timeout, 10.0)
        while True:
            try:
                await self._settings()
                await self._join()
                break
            except DOWN as exc:
                if time.monotonic() >= deadline:
                    raise ClusterError(
                        f"etcd ({', '.join(self.cfg.etcd)}) does not answer: {exc}; start it "
                        "first, or check [cluster] etcd") from None
                log.warning("etcd does not answer (%s); retrying", exc)
                await asyncio.sleep(1.0)
        self.state = "ok"
        self._task = asyncio.create_task(self._keepalive())
        self._probe_task = asyncio.create_task(self._probe())
        log.info("cluster %r: node %r joined (lease %x, TTL %d s)", self.cfg.name,
                 self.cfg.node, self.lease_id or 0, self.cfg.lease_ttl)

    async def _settings(self) -> None:
        """The shard count is the cluster's, fixed by its first node: every node must route
        a name to the same shard, or two would serve it."""
        tx = self.etcd.transactions
        mine = msgpack.packb({"shards": self.shards, "created": time.time(),
                              "by": self.cfg.node, "token": secrets.token_hex(16)})
        created, answers = await self.etcd.transaction(
            compare=[tx.version(self.keys.config) == 0],
            success=[tx.put(self.keys.config, mine)], failure=[tx.get(self.keys.config)])
        if created:
            log.info("cluster %r: created with %d shards", self.cfg.name, self.shards)
            self.token = msgpack.unpackb(mine)["token"]
            return
        settings = msgpack.unpackb(answers[0][0][0])
        self.token = str(settings.get("token") or "")
        if settings.get("shards") != self.shards:
            raise ClusterError(
                f"cluster {self.cfg.name!r} runs {settings.get('shards')} shards and this node "
                f"{self.shards}: set [workers] count = {settings.get('shards')} (every node "
                "of a cluster runs the same shard count), with a state directory of that "
                "count")

    async def _join(self) -> None:
        lease = await self.etcd.lease(self.cfg.lease_ttl)
        self.leases_granted += 1
        key = self.keys.node(self.cfg.node)
        tx = self.etcd.transactions
        # Create only: a live node of the same name holds it (its lease keeps it); one that
        # died leaves it until its lease runs out.
        won, answers = await self.etcd.transaction(
            compare=[tx.version(key) == 0],
            success=[tx.put(key, msgpack.packb(self.record), lease=lease)],
            failure=[tx.get(key)])
        if not won:
            with contextlib.suppress(*DOWN):
                await self.etcd.revoke_lease(lease.id)
            other = msgpack.unpackb(answers[0][0][0]) if answers and answers[0] else {}
            raise ClusterError(
                f"node name {self.cfg.node!r} is taken in cluster {self.cfg.name!r} by a live "
                f"node (host {other.get('host')!r}, pid {other.get('pid')}); give this node "
                "another [cluster] node, or, if that node just died, wait "
                f"{self.cfg.lease_ttl} s for its lease to expire")
        self.lease_id = lease.id
        self.last_keepalive = time.monotonic()

    async def _keepalive(self) -> None:
        interval = self.cfg.lease_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if self.state == "lost":
                    await self._join()
                    self.state = "ok"
                    log.warning("cluster: etcd answers again; node %r rejoined with a new "
                                "lease", self.cfg.node)
                    self._rejoined()
                    continue
                assert self.lease_id is not None
                if await keepalive(self.etcd, self.lease_id, self.cfg.lease_ttl) <= 0:
                    # expired while we could not reach etcd
                    self.state = "lost"
                    log.error("cluster: node %r's lease expired; its membership was deleted "
                              "by etcd. Taking a new one", self.cfg.node)
                    await self._join()
                    self.state = "ok"
                    self._rejoined()
                    continue
                self.last_keepalive = time.monotonic()
                if self.state != "ok":
                    log.warning("cluster: lease keepalives reach etcd again")
                self.state = "ok"
            except asyncio.CancelledError:
                raise
            except DOWN as exc:
                silent = time.monotonic() - self.last_keepalive
                new = "lost" if silent >= self.cfg.lease_ttl else "uncertain"
                if new != self.state:
                    log.error("cluster: lease keepalive failed (%s), %.1f s since the last "
                              "confirmed one: %s", exc, silent, new)
                self.state = new
            except Exception:
                log.exception("cluster: lease keepalive failed")

    async def _probe(self) -> None:
        while True:
            rows = await asyncio.gather(*(self._health(e) for e in self.cfg.etcd))
            self.health = {r["endpoint"]: {**r, "at": time.time()} for r in rows}
            await asyncio.sleep(PROBE_EVERY)

    def _rejoined(self) -> None:
        for callback in self.on_rejoin:
            callback()

    async def stop(self) -> None:
        """Leave at once (revoke the lease: the membership goes now, not after the TTL)."""
        for task in (self._task, self._probe_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.lease_id is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.etcd.revoke_lease(self.lease_id),
                                       self.cfg.request_timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.etcd.close(), self.cfg.request_timeout)

    # --- status ------------------------------------------------------------------------------

    def lease(self) -> dict[str, Any]:
        return {"id": f"{self.lease_id:x}" if self.lease_id else None, "state": self.state,
                "ttl": self.cfg.lease_ttl, "granted": self.leases_granted,
                "since_keepalive": round(time.monotonic() - self.last_keepalive, 3)
                if self.last_keepalive else None}

    async def status(self) -> dict[str, Any]:
        """The cluster as etcd sees it: the live nodes, the members and their health."""
        out: dict[str, Any] = {"cluster": self.cfg.name, "node": self.cfg.node,
                               "lease": self.lease(), "shards": self.shards}
        tries = len(self.cfg.etcd)
        try:
            nodes = await idempotent(lambda: self.etcd.get_prefix(self.keys.nodes), tries)
            out["revision"] = nodes.header.revision
            out["nodes"] = sorted((_node_row(kv) for kv in nodes.kvs),
                                  key=lambda r: r["node"])
            out["members"] = [{"name": m.name, "id": f"{m.id:x}",
                               "client_urls": list(m.client_urls),
                               "peer_urls": list(m.peer_urls)}
                              for m in await idempotent(self._members, tries)]
        except DOWN as exc:
            out["error"] = f"etcd does not answer: {str(exc).strip() or type(exc).__name__}"
        out["endpoints"] = await asyncio.gather(*(self._health(e) for e in self.cfg.etcd))
        return out

    async def _members(self) -> list[Any]:
        return [m async for m in self.etcd.members()]

    async def _health(self, endpoint: str) -> dict[str, Any]:
        """One member's own answer (a client of that endpoint alone)."""
        one = client([endpoint], min(self.cfg.request_timeout, 2.0))
        t0 = time.monotonic()
        try:
            st = await one.status()
            leader = st.leader
            url = "http://" + endpoint.removeprefix("http://")
            return {"endpoint": endpoint, "healthy": True, "version": st.version,
                    "db_size": st.db_size, "leader": leader.name if leader else None,
                    "is_leader": bool(leader and url in leader.client_urls),
                    "raft_term": st.raft_term, "raft_index": st.raft_index,
                    "ms": round((time.monotonic() - t0) * 1000, 1)}
        except Exception as exc:
            return {"endpoint": endpoint, "healthy": False,
                    "error": str(exc) or type(exc).__name__}
        finally:
            with contextlib.suppress(Exception):
                await one.close()


def _node_row(kv: Any) -> dict[str, Any]:
    try:
        record = msgpack.unpackb(kv.value)
    except (ValueError, msgpack.UnpackException):
        record = {}
    if not isinstance(record, dict):
        record = {}
    return {"node": kv.key.rsplit(b"/", 1)[-1].decode(errors="replace"),
            "advertise": record.get("advertise"), "agents": record.get("agents"),
            "events": record.get("events"), "host": record.get("host"), "pid": record.get("pid"),
            "version": record.get("version"), "started": record.get("started"),
            "lease": f"{kv.lease:x}"}
