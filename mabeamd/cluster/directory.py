"""The cluster's agent directory and the node links, held by the arbiter.

Every agent registered on this node gets a key agents/ID in etcd on the node's lease: its
node, capabilities, metadata, weight, priority and registration time. So an agent registered
on node A is discovered from node C (`agent.list`, `agent.get`, `agent.wait` merge this
node's registry with the others' entries), and when A dies its entries go with its lease.
An id is the cluster's: a hello for an id that a live agent holds on another node is refused
`exists`, naming the node (create-only transaction; our own entry is updated in place).

`agent.send` to an agent of another node goes over a node link: this node's SDK client to
that node's advertised endpoint (`[cluster] advertise`, in its membership key), with the op
`node.deliver`, which carries the cluster's token (kept in its config key) and which that
node serves only with the right one. The receiving node pushes the message to its agent as
if it were local, and answers whether it could.

Liveness across nodes is registration, not heartbeats: an agent of another node is listed
"healthy" as long as its entry exists (its node deletes it when the agent goes, unhealthy
ones included, or etcd does with the node's lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

from mabeamd.cluster.etcd import DOWN, unavailable
from mabeamd.cluster.informer import Informer
from mabeamd.cluster.inorder import InOrder
from mabeamd.net.wire import ErrorCode, WireError

if TYPE_CHECKING:
    from mabeamd.client.aio import AsyncClient
    from mabeamd.cluster.membership import Membership

log = logging.getLogger(__name__)


def matches(rec: dict[str, Any], q: dict[str, Any], after: str = "") -> bool:
    """A remote entry against a discovery query (agents/agentops.py parse_query), as
    agents/registry.py's discover filters local records. Remote agents are all healthy."""
    aid = rec.get("id")
    if not isinstance(aid, str) or aid <= after or not aid.startswith(q["prefix"]):
        return False
    if q["status"] not in (None, "healthy"):
        return False
    caps = set(rec.get("capabilities") or ())
    if any(c not in caps for c in q["capabilities"]):
        return False
    meta = rec.get("metadata") or {}
    return all(meta.get(k) == v for k, v in q["metadata"].items())


class Directory:
    def __init__(self, membership: Membership, *, timeout: float,
                 curve_keys: tuple[bytes, bytes] | None = None) -> None:
        """`curve_keys`: this node's server key pair, its client keys on links to nodes that
        advertise a curve+ endpoint (their authorized_keys must hold its public key)."""
        self.curve_keys = curve_keys
        self.membership = membership
        self.etcd = membership.etcd
        self.node = membership.cfg.node
        self.keys = membership.keys
        self.timeout = timeout
        self.prefix = self.keys.root + b"agents/"
        self.agents = Informer(self.etcd, self.prefix, self._changed)
        self.nodes = Informer(self.etcd, self.keys.nodes)
        self.mine: dict[str, bytes] = {}  # our agents' entries, as put (for the deletes)
        self._order = InOrder()  # per agent: claims and releases in order
        self._links: dict[str, AsyncClient] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_change: Callable[[], None] = lambda: None
        self.on_remote_gone: Callable[[str], None] = lambda agent_id: None
        self.stats = {"claims": 0, "releases": 0, "refused": 0, "sent": 0, "delivered": 0,
                      "failed": 0}
        membership.on_rejoin.append(self._rejoined)

    async def start(self) -> None:
        self.agents.start()
        self.nodes.start()
        await asyncio.wait_for(asyncio.gather(self.agents.ready.wait(),
                                              self.nodes.ready.wait()), 3 * self.timeout)

    async def stop(self) -> None:
        await self.agents.stop()
        await self.nodes.stop()
        for task in list(self._tasks):
            task.cancel()
        for link in self._links.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.close(), 1.0)

    def _changed(self, key: str, old: Any, new: Any) -> None:
        self.on_change()  # agent.wait on this node may now be satisfied
        if new is None and isinstance(old, dict) and old.get("node") != self.node:
            self.on_remote_gone(key)  # sessions here count it absent

    # --- our agents' entries ------------------------------------------------------------------

    async def _in_order(self, agent_id: str, work: Callable[[], Any]) -> Any:
        return await self._order.run(agent_id, work)

    async def claim(self, record: dict[str, Any]) -> None:
        """Put our agent's entry on the lease; refuse (`exists`) an id a live agent holds
        on another node. Raises unavailable when etcd does not answer."""
        agent_id = record["id"]

        async def work() -> None:
            key = self.prefix + agent_id.encode()
            value = msgpack.packb({**record, "node": self.node})
            tx = self.etcd.transactions
            lease = self.membership.lease_id
            try:
                won, answers = await self.etcd.transaction(
                    compare=[tx.version(key) == 0], success=[tx.put(key, value, lease=lease)],
                    failure=[tx.get(key)])
                if not won:
                    found = answers[0][0][0] if answers and answers[0] else b""
                    holder = msgpack.unpackb(found).get("node") if found else None
                    if holder not in (self.node, None):
                        self.stats["refused"] += 1
                        raise WireError(ErrorCode.EXISTS, f"agent {agent_id!r} is registered "
                                        f"on node {holder!r} of the cluster")
                    await self.etcd.put(key, value, lease=lease)
            except DOWN as exc:
                raise unavailable(exc, f"registering {agent_id!r} in the cluster's "
                                  "directory", applied=None) from None
            self.mine[agent_id] = value
            self.stats["claims"] += 1

        await self._in_order(agent_id, work)

    def release(self, agent_id: str) -> None:
        """Our agent went (bye, gone, taken over elsewhere): delete its entry if it is still
        the one we put. In the background, retried while etcd does not answer (the lease
        takes it in the end anyway)."""
        value = self.mine.pop(agent_id, None)
        if value is None:
            return

        async def work() -> None:
            key = self.prefix + agent_id.encode()
            tx = self.etcd.transactions
            for _ in range(5):
                try:
                    await self.etcd.transaction(compare=[tx.value(key) == value],
                                                success=[tx.delete(key)], failure=[])
                    self.stats["releases"] += 1
                    return
                except DOWN:
                    await asyncio.sleep(self.timeout)

        self._spawn(self._in_order(agent_id, work))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _rejoined(self) -> None:
        """A new lease after a lost one: etcd deleted our entries with the old; put them
        again (the ids are still registered here)."""
        lease = self.membership.lease_id
        for agent_id, value in list(self.mine.items()):
            async def again(key: bytes = self.prefix + agent_id.encode(),
                            v: bytes = value) -> None:
                with contextlib.suppress(*DOWN):
                    await self.etcd.put(key, v, lease=lease)
            self._spawn(again())

    # --- the others' agents -------------------------------------------------------------------

    def remote(self, agent_id: str) -> dict[str, Any] | None:
        rec = self.agents.items.get(agent_id)
        if not isinstance(rec, dict) or rec.get("node") == self.node:
            return None
        return rec

    def remote_matching(self, q: dict[str, Any], after: str = "") -> list[dict[str, Any]]:
        return sorted((r for r in self.agents.items.values()
                       if isinstance(r, dict) and r.get("node") != self.node
                       and matches(r, q, after)), key=lambda r: r["id"])

    @staticmethod
    def public(rec: dict[str, Any]) -> dict[str, Any]:
        """A remote entry in the shape agent.get/agent.list answer (plus its node)."""
        return {"id": rec["id"], "status": "healthy",
                "capabilities": list(rec.get("capabilities") or ()),
                "metadata": rec.get("metadata") or {}, "weight": rec.get("weight", 1.0),
                "priority": rec.get("priority", 0), "principal": rec.get("principal"),
                "managed": rec.get("managed"), "registered_at": rec.get("registered_at"),
                "last_seen_age": None, "node": rec.get("node")}

    # --- node links ---------------------------------------------------------------------------

    async def send(self, rec: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
        """Hand a message for an agent of another node to that node."""
        reply = await self.to_node(str(rec.get("node")), "node.deliver", message,
                                   f"the message for {rec['id']!r}")
        return {**reply, "node": rec.get("node")}

    async def to_node(self, node: str, op: str, body: dict[str, Any], what: str) -> Any:
        """One request to another node over its link (node.deliver, node.push,
        node.respond, node.get_session, node.cancel_session), with the cluster's token; its
        refusal as the wire error."""
        info = self.nodes.items.get(node)
        if not isinstance(info, dict) or not isinstance(info.get("advertise"), str):
            raise WireError(ErrorCode.NOT_FOUND, f"node {node!r} is not in the cluster any "
                            f"more ({what})")
        link = await self._link(node, info["advertise"])
        from mabeamd.client.errors import MabeamError

        self.stats["sent"] += 1
        try:
            return await link.request(op, {"token": self.membership.token, "node": self.node,
                                           **body}, timeout=self.timeout)
        except MabeamError as exc:
            self.stats["failed"] += 1
            plain = exc.code in (ErrorCode.NOT_FOUND, ErrorCode.BUSY, ErrorCode.CONFLICT,
                                 ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN)
            raise WireError(exc.code if plain and exc.code else ErrorCode.UNAVAILABLE,
                            f"node {node!r} ({info['advertise']}) did not take {what}: {exc}",
                            details=None if plain else {"applied": "unknown"}) from None

    async def _link(self, node: str, address: str) -> AsyncClient:
        plain = address.removeprefix("curve+")
        link = self._links.get(node)
        if link is not None and link.endpoint == plain:
            return link
        if link is not None:
            await link.close()
        from mabeamd.client.aio import AsyncClient

        server_key: bytes | None = None
        if address.startswith("curve+"):
            info = self.nodes.items.get(node) or {}
            if self.curve_keys is None or not isinstance(info.get("curve_key"), str):
                raise WireError(ErrorCode.UNAVAILABLE, f"node {node!r} is reached over CURVE "
                                f"({address}) and this node has no server key pair to "
                                "authenticate with ([security] server_key), or that node "
                                "published no public key", details={"applied": False})
            server_key = info["curve_key"].encode()
        link = AsyncClient(plain, timeout=self.timeout, heartbeat=False, direct=False,
                           server_key=server_key,
                           client_keys=self.curve_keys if server_key else None)
        await link.connect()
        self._links[node] = link
        return link

    def check_token(self, body: dict[str, Any]) -> None:
        token = body.get("token")
        if not self.membership.token or not isinstance(token, str) or \
                not hmac.compare_digest(token, self.membership.token):
            raise WireError(ErrorCode.FORBIDDEN, "node.deliver is for the nodes of this "
                            "cluster (wrong or missing token)")

    def status(self) -> dict[str, Any]:
        return {"agents_here": len(self.mine),
                "agents_elsewhere": sum(1 for r in self.agents.items.values()
                                        if isinstance(r, dict) and r.get("node") != self.node),
                "links": sorted(self._links), **self.stats, "at": time.time()}
