"""The agent ops served on the agent endpoint, and agent liveness.

Ops (see docs/protocol.md for the exact bodies):
    hello        register (or update) an agent id on this connection
    heartbeat    signs of life for some or all of the connection's agents
    bye          deregister
    agent.get    one agent
    agent.list   discover by capability, status, metadata, id prefix (paginated)
    agent.wait   wait until N matching agents are healthy
    agent.send   a message to another agent, pushed to its connection
    ping         liveness of the daemon itself
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mabeamd import __version__
from mabeamd.agents import credentials
from mabeamd.agents.endpoint import AgentEndpoint, Request
from mabeamd.agents.events import EventPublisher
from mabeamd.agents.registry import HEALTHY, UNHEALTHY, AgentRecord, Registry, check_agent_id
from mabeamd.config import AgentsSection
from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, WireError, check_fields

if TYPE_CHECKING:
    from mabeamd.cluster.directory import Directory

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 1000
MAX_WAIT = 3600.0


def parse_query(body: dict[str, Any]) -> dict[str, Any]:
    """Validate the discovery fields shared by agent.list and agent.wait."""
    caps = body.get("capabilities", [])
    if isinstance(caps, str):
        caps = [caps]
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise WireError(ErrorCode.BAD_REQUEST, "capabilities must be a string or a list of them")
    status = body.get("status", HEALTHY)
    if status not in (HEALTHY, UNHEALTHY, "any"):
        raise WireError(ErrorCode.BAD_REQUEST, "status must be healthy, unhealthy or any")
    meta = body.get("metadata", {})
    if not isinstance(meta, dict):
        raise WireError(ErrorCode.BAD_REQUEST, "metadata must be a map")
    prefix = body.get("prefix", "")
    if not isinstance(prefix, str):
        raise WireError(ErrorCode.BAD_REQUEST, "prefix must be a string")
    return {"capabilities": caps, "status": None if status == "any" else status,
            "metadata": meta, "prefix": prefix}


class AgentService:
    def __init__(self, endpoint: AgentEndpoint, registry: Registry, events: EventPublisher,
                 settings: AgentsSection, *, shards: int = 0, write_key: bytes = b"",
                 hello_extra: dict[str, Any] | None = None,
                 on_down: Callable[[str], None] = lambda agent_id: None,
                 on_takeover: Callable[[str, str | None], None] | None = None) -> None:
        """`hello_extra`: what every hello reply also carries (shard count, shm and event
        endpoints); `write_key` signs the write credential handed out at hello; `on_down` is
        told of every agent that turns unhealthy, goes or says bye (sessions: absent);
        `on_takeover` of an id taken over by another connection (the audit log)."""
        self.endpoint = endpoint
        self.registry = registry
        self.events = events
        self.settings = settings
        self._changed = asyncio.Event()
        self._push_ids = itertools.count(1)
        self.hello_extra = dict(hello_extra or {})
        # Direct variable access (shard_endpoint.py), offered on plain connections only:
        # each shard's endpoint as its worker bound it (None: not serving one).
        self.shard_endpoints: list[str | None] = [None] * shards
        self.write_key = write_key
        self._on_down = on_down
        # (agent, principal or None): an id taken over by another connection (audit log).
        self.on_takeover = on_takeover
        # Cluster mode: the cluster's directory and node links (cluster/directory.py).
        self.directory: Directory | None = None
        self._hellos: dict[str, int] = {}  # agent -> its hellos waiting on a claim (cluster)
        endpoint.handlers.update({
            "hello": self.hello, "heartbeat": self.heartbeat, "bye": self.bye,
            "agent.get": self.get_agent, "agent.list": self.list_agents,
            "agent.wait": self.wait_agents, "agent.send": self.send_message, "ping": self.ping,
        })

    # --- liveness --------------------------------------------------------------------------

    @property
    def unhealthy_after(self) -> float:
        return self.settings.heartbeat_interval * self.settings.missed_beats

    def _pulse(self) -> None:
        """Wake agent.wait requests: the set of agents changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.02, min(1.0, self.settings.heartbeat_interval / 2)))
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        # An agent whose hello waits on its directory claim has not been answered yet: it
        # cannot heartbeat, so it is not silent (the claim's own timeout bounds the wait).
        for agent_id in self._hellos:
            self.registry.touch(agent_id, now)
        unhealthy, gone = self.registry.sweep(now, self.unhealthy_after, self.settings.gone_after)
        for rec in unhealthy:
            log.info("agent %s unhealthy: silent for %.1fs", rec.id, now - rec.last_seen)
            self.events.publish("agent.unhealthy", {"agent": rec.id})
        for rec in gone:
            log.info("agent %s gone", rec.id)
            self.events.publish("agent.gone", {"agent": rec.id, "reason": "silent"})
            if self.directory is not None:
                self.directory.release(rec.id)
        for rec in (*unhealthy, *gone):
            self._down(rec.id)
        if unhealthy or gone:
            self._pulse()

    def _down(self, agent_id: str) -> None:
        self._on_down(agent_id)

    def reconfigure(self, settings: AgentsSection) -> None:
        """A reload's [agents] section (heartbeat timing, limits)."""
        self.settings = settings

    def set_shard_endpoint(self, shard: int, address: str | None) -> None:
        """Where shard's worker serves variable requests directly (None: nowhere, e.g.
        it exited); offered at hello from now on."""
        self.shard_endpoints[shard] = address

    def _alive(self, agent_id: str) -> None:
        if self.registry.touch(agent_id, time.monotonic()):
            self.events.publish("agent.healthy", {"agent": agent_id})
            self._pulse()

    # --- ops -------------------------------------------------------------------------------

    def ping(self, req: Request, body: dict[str, Any]) -> Any:
        check_fields(body, "ping")
        return {"pong": True, "time": time.time()}

    def attach_directory(self, directory: Directory) -> None:
        """Cluster mode: hellos claim their ids in the cluster's directory, discovery and
        messages reach the other nodes' agents, and node.deliver is served."""
        self.directory = directory
        directory.on_change = self._pulse
        self.endpoint.handlers["node.deliver"] = self.deliver

    def hello(self, req: Request, body: dict[str, Any]) -> Any:
        reply = self._hello(req, body)
        if self.directory is None:
            return reply
        return self._claimed(reply)

    async def _claimed(self, reply: dict[str, Any]) -> dict[str, Any]:
        """Cluster mode: the hello is answered once the id is ours in the directory; one a
        live agent holds on another node is refused (and undone here)."""
        assert self.directory is not None
        agent_id = reply["agent"]
        rec = self.registry.agents.get(agent_id)
        if rec is None:  # gone meanwhile (a bye raced the hello)
            raise WireError(ErrorCode.NOT_FOUND, f"agent {agent_id!r} left during its hello")
        # A newer hello for the id may come while this claim waits on etcd (a client that
        # re-registers every heartbeat while another node still holds the id): only the
        # newest one's refusal undoes the registration.
        seq = self._hellos[agent_id] = self._hellos.get(agent_id, 0) + 1
        try:
            await self.directory.claim({**rec.public(time.monotonic()), "last_seen_age": None})
        except WireError:
            if reply["created"] and self.registry.agents.get(agent_id) is rec and \
                    self._hellos.get(agent_id) == seq:
                self.registry.deregister(agent_id)
                self._pulse()
            raise
        finally:
            if self._hellos.get(agent_id) == seq:
                del self._hellos[agent_id]
        if self.registry.agents.get(agent_id) is not rec:
            # It left (bye) while the claim waited: the entry just put is nobody's, and the
            # credential in the reply was revoked; a newer hello for the id keeps both.
            if agent_id not in self.registry.agents:
                self.directory.release(agent_id)
            raise WireError(ErrorCode.NOT_FOUND, f"agent {agent_id!r} left during its hello")
        # Liveness counts from the answer: the agent heartbeats once it has it.
        self.registry.touch(agent_id, time.monotonic())
        return reply

    def _hello(self, req: Request, body: dict[str, Any]) -> dict[str, Any]:
        check_fields(body, "hello", {"agent", "capabilities", "metadata", "weight", "priority",
                                 "token"})
        agent_id = check_agent_id(body.get("agent"))
        before = self.registry.agents.get(agent_id)
        old_conn = before.conn if before is not None else None
        rec, created = self.registry.register(agent_id, req.conn, req.principal, body,
                                              now=time.monotonic(), wall=time.time())
        if old_conn is not None and old_conn != req.conn:
            # Tell the connection that held it: a client that re-registered it from there
            # (as after a reconnect) would take it back, and the two would steal the id
            # from each other for as long as both ran.
            self.endpoint.push(old_conn, next(self._push_ids), "agent.taken_over",
                               {"agent": agent_id})
            if self.on_takeover is not None:
                self.on_takeover(agent_id, req.principal)
        self.events.publish("agent.registered" if created else "agent.updated",
                            {"agent": agent_id, "capabilities": list(rec.capabilities)})
        self._pulse()
        if created:
            log.debug("agent %s registered", agent_id)
        reply = {
            "agent": agent_id, "token": rec.token, "created": created,
            "heartbeat_interval": self.settings.heartbeat_interval,
            "missed_beats": self.settings.missed_beats,
            "server": {"mabeamd": __version__, "protocol": wire.PROTOCOL.decode()},
            **self.hello_extra,
        }
        if (self.write_key and any(self.shard_endpoints)
                and not self.endpoint.endpoints[req.conn[0]].curve):
            # Not to CURVE clients: shard endpoints are plain, and their traffic must not
            # leave the encrypted channel.
            reply["shard_endpoints"] = self.shard_endpoints
            reply["credential"] = credentials.issue(self.write_key, agent_id, rec.epoch)
        return reply

    def heartbeat(self, req: Request, body: dict[str, Any]) -> Any:
        check_fields(body, "heartbeat", {"agents"})
        ids = body.get("agents")
        if ids is None:
            ids = self.registry.connection_agents(req.conn)
        elif not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise WireError(ErrorCode.BAD_REQUEST, "agents must be a list of agent ids")
        unknown = []
        for agent_id in ids:
            rec = self.registry.agents.get(agent_id)
            if rec is None or rec.conn != req.conn:
                unknown.append(agent_id)  # the client re-registers these
            else:
                self._alive(agent_id)
        return {"alive": len(ids) - len(unknown), "unknown": unknown,
                "heartbeat_interval": self.settings.heartbeat_interval}

    def bye(self, req: Request, body: dict[str, Any]) -> Any:
        check_fields(body, "bye", {"agent"})
        agent_id = check_agent_id(body.get("agent"))
        self.registry.owned(agent_id, req.conn)
        self.registry.deregister(agent_id)
        if self.directory is not None:
            self.directory.release(agent_id)
        self.events.publish("agent.bye", {"agent": agent_id})
        self._down(agent_id)
        self._pulse()
        return {"agent": agent_id}

    def get_agent(self, req: Request, body: dict[str, Any]) -> Any:
        check_fields(body, "agent.get", {"agent"})
        agent_id = check_agent_id(body.get("agent"))
        rec = self.registry.agents.get(agent_id)
        if rec is None:
            remote = self.directory.remote(agent_id) if self.directory is not None else None
            if remote is None:
                raise WireError(ErrorCode.NOT_FOUND, f"no agent {agent_id!r}")
            return self.directory.public(remote)  # type: ignore[union-attr]
        return self._public(rec, time.monotonic())

    def _public(self, rec: AgentRecord, now: float) -> dict[str, Any]:
        d = rec.public(now)
        if self.directory is not None:
            d["node"] = self.directory.node
        return d

    def _merged(self, page: list[AgentRecord], cursor: str | None, q: dict[str, Any],
                after: str, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """This node's page and the other nodes' matching agents, as one page by id."""
        now = time.monotonic()
        mine = [self._public(r, now) for r in page]
        if self.directory is None:
            return mine, cursor
        theirs = [self.directory.public(r) for r in self.directory.remote_matching(q, after)]
        if cursor is not None:  # this node has more past its page: stop where it stopped
            theirs = [r for r in theirs if r["id"] <= cursor]
        merged = sorted(mine + theirs, key=lambda r: r["id"])
        if len(merged) > limit:
            return merged[:limit], merged[limit - 1]["id"]
        return merged, cursor

    def list_agents(self, req: Request, body: dict[str, Any]) -> Any:
        check_fields(body, "agent.list", {"capabilities", "status", "metadata", "prefix", "after",
                                      "limit"})
        q = parse_query(body)
        after = body.get("after") or ""
        limit = body.get("limit", 100)
        if not isinstance(after, str):
            raise WireError(ErrorCode.BAD_REQUEST, "after must be a cursor string")
        if isinstance(limit, bool) or not isinstance(limit, int) or \
                not 1 <= limit <= MAX_LIST_LIMIT:
            raise WireError(ErrorCode.BAD_REQUEST, f"limit must be 1..{MAX_LIST_LIMIT}")
        page, cursor = self.registry.discover(after=after, limit=limit, **q)
        agents, cursor = self._merged(page, cursor, q, after, limit)
        return {"agents": agents, "next": cursor}

    async def wait_agents(self, req: Request, body: dict[str, Any]) -> Any:
        check_fields(body, "agent.wait", {"capabilities", "status", "metadata", "prefix", "count",
                                      "timeout"})
        q = parse_query(body)
        count = body.get("count", 1)
        timeout = body.get("timeout", 10.0)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100000:
            raise WireError(ErrorCode.BAD_REQUEST, "count must be 1..100000")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
                not 0 <= timeout <= MAX_WAIT:
            raise WireError(ErrorCode.BAD_REQUEST, f"timeout must be 0..{MAX_WAIT:g} seconds")
        deadline = time.monotonic() + timeout
        while True:
            page, more = self.registry.discover(limit=count, **q)
            found, _ = self._merged(page, more, q, "", count)
            if len(found) >= count:
                return {"agents": found}
            left = deadline - time.monotonic()
            if left <= 0:
                raise WireError(ErrorCode.TIMEOUT, f"{len(found)} of {count} matching agents "
                                f"after {timeout:g}s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def send_message(self, req: Request, body: dict[str, Any]) -> Any:
        check_fields(body, "agent.send", {"from", "to", "topic", "body"})
        sender = check_agent_id(body.get("from"), "from")
        target = check_agent_id(body.get("to"), "to")
        topic = body.get("topic", "")
        if not isinstance(topic, str) or len(topic) > 256:
            raise WireError(ErrorCode.BAD_REQUEST, "topic must be a string of <= 256 chars")
        self.registry.owned(sender, req.conn)
        self._alive(sender)
        rec = self.registry.agents.get(target)
        if rec is None:
            remote = self.directory.remote(target) if self.directory is not None else None
            if remote is None:
                raise WireError(ErrorCode.NOT_FOUND, f"no agent {target!r}")
            assert self.directory is not None
            return self.directory.send(remote, {"from": sender, "to": target, "topic": topic,
                                                "body": body.get("body")})
        return self._push_message(sender, target, topic, body.get("body"))

    def deliver(self, req: Request, body: dict[str, Any]) -> Any:
        """node.deliver: a message another node of the cluster hands over for one of our
        agents (cluster/directory.py); only with the cluster's token."""
        if self.directory is None:
            raise WireError(ErrorCode.UNKNOWN_OP, "node.deliver: this daemon is not in a "
                            "cluster")
        self.directory.check_token(body)
        check_fields(body, "node.deliver", {"token", "node", "from", "to", "topic", "body"},
                     {"token", "from", "to"})
        target = check_agent_id(body.get("to"), "to")
        sender = check_agent_id(body.get("from"), "from")
        topic = body.get("topic", "")
        if not isinstance(topic, str) or len(topic) > 256:
            raise WireError(ErrorCode.BAD_REQUEST, "topic must be a string of <= 256 chars")
        if target not in self.registry.agents:
            raise WireError(ErrorCode.NOT_FOUND, f"no agent {target!r} on this node")
        self.directory.stats["delivered"] += 1
        return self._push_message(sender, target, topic, body.get("body"))

    def _push_message(self, sender: str, target: str, topic: str, payload: Any,
                      ) -> dict[str, Any]:
        rec = self.registry.agents[target]
        push_id = next(self._push_ids)
        ok = self.endpoint.push(rec.conn, push_id, "message", {
            "to": target, "from": sender, "topic": topic, "body": payload})
        if not ok:
            raise WireError(ErrorCode.BUSY, f"agent {target!r} is not reading its messages "
                            "(or its connection is gone)")
        return {"delivered": True, "push_id": push_id}

    # --- admin views -----------------------------------------------------------------------

    def admin_list(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [r.public(now) for r in sorted(self.registry.agents.values(),
                                              key=lambda r: r.id)]

    def admin_show(self, agent_id: str) -> dict[str, Any]:
        rec: AgentRecord | None = self.registry.agents.get(agent_id)
        if rec is None:
            raise WireError(ErrorCode.NOT_FOUND, f"no agent {agent_id!r}")
        d = rec.public(time.monotonic())
        d["connection"] = {"endpoint": str(self.endpoint.endpoints[rec.conn[0]]),
                           "routing_id": rec.conn[1].hex()}
        return d
