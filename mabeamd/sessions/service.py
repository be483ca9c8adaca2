"""Session ops on the agent endpoint (and for mabeamctl): the arbiter's half of the session
engine. The sessions themselves run in workers (engine.py); the arbiter

- validates a session.start, resolves its participants (ids, or a capability query against
  the registry), picks the shard that owns its variables and forwards it there;
- relays what the session's worker sends: invitations and notices pushed to participants,
  `session.*` events, and the final record (kept for `session.get`, pushed to the initiator
  when it asked for `notify`, returned to it when it asked to `wait`);
- routes each participant's session.respond to the session's worker;
- tells workers when agents leave or turn unhealthy (they count as absent), and ends the
  sessions of a worker that died as `failed: worker_restarted` (a worker's sessions live in
  its memory; their writes were applied all together or not at all).

A session's variables must all live on one shard, because that shard's worker applies them
in one WAL record. Names sharing a `{tag}` share a shard (see sharding.shard_of).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mabeamd.agents.agentops import parse_query
from mabeamd.agents.endpoint import AgentEndpoint, Request
from mabeamd.agents.events import EventPublisher
from mabeamd.agents.registry import Registry, check_agent_id
from mabeamd.config import SessionsSection
from mabeamd.net.shardcall import ShardCalls
from mabeamd.net.wire import ErrorCode, WireError, check_fields
from mabeamd.observe.opstats import SESSION_BUCKETS, Histograms
from mabeamd.plugins import PluginHost
from mabeamd.protocol import Protocol
from mabeamd.sessions.terms import deadline_of, protocol_named
from mabeamd.storage.sharding import shard_of
from mabeamd.storage.variables import ADMIN

log = logging.getLogger(__name__)

START_FIELDS = {"agent", "protocol", "participants", "query", "variables", "params", "deadline",
                "wait", "notify", "on_conflict", "key"}
WAIT_GRACE = 5.0  # beyond the deadline, for the worker to report the end


if TYPE_CHECKING:
    from mabeamd.agents.registry import AgentRecord
    from mabeamd.sessions.remote import RemoteSessions


def _participant(rec: AgentRecord) -> dict[str, Any]:
    return {"id": rec.id, "weight": rec.weight, "priority": rec.priority,
            "metadata": rec.metadata}


@dataclass
class Entry:
    id: str
    shard: int
    protocol: str
    initiator: str
    created_at: float
    deadline: float
    notify: bool
    state: str = "starting"
    record: dict[str, Any] | None = None
    done: asyncio.Future[dict[str, Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    started: float = field(default_factory=time.monotonic)  # for the duration metric

    def final(self) -> dict[str, Any] | None:
        return self.record

    def summary(self) -> dict[str, Any]:
        return {"session": self.id, "protocol": self.protocol, "initiator": self.initiator,
                "state": self.state, "shard": self.shard, "created_at": self.created_at,
                "reason": (self.record or {}).get("reason")}


class SessionService:
    def __init__(self, calls: ShardCalls, registry: Registry, endpoint: AgentEndpoint,
                 events: EventPublisher, plugins: PluginHost, *,
                 settings: SessionsSection,
                 on_outcome: Callable[[dict[str, Any]], None] | None = None,
                 start_gate: Callable[[], None] | None = None) -> None:
        self.calls = calls
        self.registry = registry
        self.endpoint = endpoint
        self.events = events
        self.plugins = plugins
        self.settings = settings
        self.live: dict[str, Entry] = {}
        self.ended: OrderedDict[str, Entry] = OrderedDict()
        self._push_ids = itertools.count(1)
        # Cluster mode: participants on other nodes (sessions/remote.py).
        self.remote: RemoteSessions | None = None
        self._prefix = secrets.token_hex(2)
        self._ids = itertools.count(1)
        self.protocols = plugins.protocols()  # refreshed on reload
        self.stats = {"started": 0, "applied": 0, "failed": 0, "cancelled": 0, "timed_out": 0}
        # (protocol, final state) -> sessions ended so far (metrics); bounded by the
        # installed protocols times the four end states.
        self.outcomes: dict[tuple[str, str], int] = {}
        self.durations = Histograms(SESSION_BUCKETS)  # by protocol, start to end
        # protocol -> [revenue, clearing prices seen, their sum, the last] over applied
        # sessions (Protocol.trade); bounded by the installed protocols.
        self.trades: dict[str, list[float]] = {}
        # The audit log's hooks (daemon/auditside.py): each ended session's full record,
        # and a check that raises while session starts must be refused.
        self.on_outcome = on_outcome
        # Readers of each ended session's record with its audit extra (the console's feed).
        self.on_ended_extra: list[Callable[[dict[str, Any]], None]] = []
        self.start_gate = start_gate

        # protocol -> sessions started (for `status`, whose rates `mabeamctl top` shows).
        self.started_by_protocol: dict[str, int] = {}

    def by_protocol(self) -> dict[str, dict[str, int]]:
        """{protocol: {"started": N, END_STATE: N}}: the counters per protocol so far."""
        out: dict[str, dict[str, int]] = {p: {"started": n}
                                          for p, n in self.started_by_protocol.items()}
        for (proto, state), n in self.outcomes.items():
            out.setdefault(proto, {"started": 0})[state] = n
        return out

    def reconfigure(self, settings: SessionsSection, protocols: dict[str, Protocol]) -> None:
        """A reload: the new [sessions] section and the protocols the plugins now offer."""
        self.settings = settings
        self.protocols = protocols

    def id_prefix(self, head: str) -> None:
        """Put `head` before the random part of the session ids made from now on."""
        self._prefix = head + self._prefix

    def next_push_id(self) -> int:
        return next(self._push_ids)

    def install(self, endpoint: AgentEndpoint) -> None:
        endpoint.handlers.update({"session.start": self.start, "session.get": self.get,
                                  "session.respond": self.respond,
                                  "session.cancel": self.cancel})

    # --- helpers ---------------------------------------------------------------------------

    def _actor(self, req: Request, body: dict[str, Any], op: str) -> str:
        agent = check_agent_id(body.get("agent"))
        self.registry.owned(agent, req.conn)
        self.registry.touch(agent, time.monotonic())
        reason = self.plugins.authorize(agent, op, body)
        if reason is not None:
            raise WireError(ErrorCode.FORBIDDEN, reason)
        return agent

    def entry(self, session: Any) -> Entry:
        if not isinstance(session, str):
            raise WireError(ErrorCode.BAD_REQUEST, "session must be a session id")
        e = self.live.get(session) or self.ended.get(session)
        if e is None:
            raise WireError(ErrorCode.NOT_FOUND, f"no session {session!r} (ended sessions are "
                            f"kept for the last {self.settings.keep_finished})")
        return e

    def _participants(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        ids, query = body.get("participants"), body.get("query")
        if (ids is None) == (query is None):
            raise WireError(ErrorCode.BAD_REQUEST, "give participants (a list of agent ids) "
                            "or query (a capability query), not both")
        limit = self.settings.max_participants
        if ids is not None:
            if not isinstance(ids, list) or not ids or len(ids) > limit:
                raise WireError(ErrorCode.BAD_REQUEST, f"participants must be a list of 1-"
                                f"{limit} agent ids")
            if len(set(map(str, ids))) != len(ids):
                raise WireError(ErrorCode.BAD_REQUEST, "participants must be distinct")
            found: list[dict[str, Any]] = []
            for i in ids:
                rec = self.registry.agents.get(check_agent_id(i, "participants[]"))
                if rec is not None:
                    found.append(_participant(rec))
                elif self.remote is not None and (far := self.remote.participant(i)):
                    found.append(far)
                else:
                    raise WireError(ErrorCode.NOT_FOUND, f"participant {i!r} is not registered")
            return found
        else:
            if not isinstance(query, dict):
                raise WireError(ErrorCode.BAD_REQUEST, "query must be a map (capabilities, "
                                "status, metadata, prefix)")
            check_fields(query, "query", {"capabilities", "status", "metadata", "prefix"})
        q = parse_query(query)
        recs, more = self.registry.discover(limit=limit, **q)
        matched = [_participant(r) for r in recs]
        if self.remote is not None:
            matched = sorted(matched + self.remote.matching(q), key=lambda p: p["id"])
        if more or len(matched) > limit:
            raise WireError(ErrorCode.BAD_REQUEST, f"more than {limit} agents match the "
                            "query ([sessions] max_participants)")
        if not matched:
            raise WireError(ErrorCode.NOT_FOUND, "no agent matches the query")
        return matched

    def _shard(self, body: dict[str, Any], sid: str) -> tuple[int, list[str]]:
        names = body.get("variables", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or \
                len(set(names)) != len(names):
            raise WireError(ErrorCode.BAD_REQUEST, "variables must be a list of distinct names")
        n = self.calls.shards
        shards = sorted({shard_of(v, n) for v in names})
        if len(shards) > 1:
            raise WireError(ErrorCode.BAD_REQUEST, "a session's variables must live on one "
                            f"shard, these are on shards {shards}: give them a common "
                            "{tag}, e.g. '{alloc}.gpu0' and '{alloc}.gpu1'")
        if shards:
            return shards[0], names
        key = body.get("key", sid)
        if not isinstance(key, str):
            raise WireError(ErrorCode.BAD_REQUEST, "key must be a string")
        return zlib.crc32(key.encode()) % n, names

    # --- agent ops -------------------------------------------------------------------------

    async def start(self, req: Request, body: dict[str, Any]) -> Any:
        check_fields(body, "session.start", START_FIELDS, {"agent", "protocol"})
        agent = self._actor(req, body, "session.start")
        proto = protocol_named(self.protocols, body["protocol"])
        params = body.get("params", {})
        if not isinstance(params, dict):
            raise WireError(ErrorCode.BAD_REQUEST, "params must be a map")
        deadline = deadline_of(proto, body.get("deadline"), self.settings.max_deadline)
        on_conflict = body.get("on_conflict", "refuse")
        if on_conflict not in ("refuse", "queue"):
            raise WireError(ErrorCode.BAD_REQUEST, "on_conflict must be refuse or queue")
        for flag in ("wait", "notify"):
            if not isinstance(body.get(flag, False), bool):
                raise WireError(ErrorCode.BAD_REQUEST, f"{flag} must be true or false")
        if self.start_gate is not None:
            self.start_gate()
        if len(self.live) >= self.settings.max_active:
            raise WireError(ErrorCode.BUSY, f"{len(self.live)} sessions are running "
                            "([sessions] max_active); retry later")
        participants = self._participants(body)
        sid = f"s{self._prefix}-{next(self._ids)}"
        shard, names = self._shard(body, sid)
        e = Entry(sid, shard, proto.name, agent, time.time(), deadline,
                  bool(body.get("notify")))
        self.live[sid] = e
        spec = {"session": sid, "protocol": proto.name, "initiator": agent,
                "participants": participants, "variables": names, "params": params,
                "deadline": deadline, "max_deadline": self.settings.max_deadline,
                "on_conflict": on_conflict}
        try:
            started = await self.calls.call(shard, "session.start", spec, ADMIN)
        except WireError:
            if self.live.pop(sid, None) is not None and not e.done.done():
                e.done.cancel()
            raise
        self.stats["started"] += 1
        self.started_by_protocol[proto.name] = self.started_by_protocol.get(proto.name, 0) + 1
        if e.record is None:
            e.state = started["state"]
        if not body.get("wait"):
            return {"session": sid, "state": e.state, "shard": shard}
        try:
            return await asyncio.wait_for(asyncio.shield(e.done), e.deadline + WAIT_GRACE)
        except asyncio.TimeoutError:
            raise WireError(ErrorCode.TIMEOUT, f"session {sid} did not end in time; ask "
                            "session.get") from None

    def _elsewhere(self, session: Any) -> str | None:
        """The node holding `session` when it is not this one (cluster mode)."""
        if self.remote is None or session in self.live or session in self.ended:
            return None
        return self.remote.node_of(session)

    async def get(self, req: Request, body: dict[str, Any]) -> Any:
        check_fields(body, "session.get", {"session"}, {"session"})
        if self.remote is not None and (node := self._elsewhere(body["session"])):
            return await self.remote.get(node, body["session"])
        return await self.show(body["session"])

    async def respond(self, req: Request, body: dict[str, Any]) -> Any:
        check_fields(body, "session.respond", {"agent", "session", "round", "response"},
                     {"agent", "session", "round"})
        if isinstance(body["round"], bool) or not isinstance(body["round"], int):
            raise WireError(ErrorCode.BAD_REQUEST, "round must be an integer: the round "
                            "number of the invitation being answered")
        agent = self._actor(req, body, "session.respond")
        if self.remote is not None and (node := self._elsewhere(body["session"])):
            return await self.remote.respond(node, agent, body)  # a session of another node
        e = self.entry(body["session"])
        if e.record is not None:
            raise WireError(ErrorCode.CONFLICT, f"session {e.id} has ended ({e.state})")
        return await self._to_worker(e, "session.respond", {
            "session": e.id, "agent": agent, "round": body["round"],
            "response": body.get("response")})

    async def cancel(self, req: Request, body: dict[str, Any]) -> Any:
        check_fields(body, "session.cancel", {"agent", "session", "reason"},
                     {"agent", "session"})
        agent = self._actor(req, body, "session.cancel")
        if self.remote is not None and (node := self._elsewhere(body["session"])):
            return await self.remote.cancel(node, agent, body["session"], body.get("reason"))
        return await self.cancel_by(agent, body["session"], body.get("reason"))

    async def cancel_by(self, agent: str, session: Any, reason: Any) -> Any:
        e = self.entry(session)
        if e.initiator != agent:
            raise WireError(ErrorCode.FORBIDDEN, f"only the initiator {e.initiator!r} (or an "
                            "operator) may cancel session " + e.id)
        return await self.cancel_as(e.id, agent, reason)

    # --- for mabeamctl ---------------------------------------------------------------------

    async def show(self, session: Any) -> dict[str, Any]:
        e = self.entry(session)
        if e.record is not None:
            return e.record
        try:
            record: dict[str, Any] = await self._to_worker(e, "session.get", {"session": e.id})
        except WireError:
            final = e.final()  # it may have ended while we asked
            if final is not None:
                return final
            raise
        return {**record, "shard": e.shard}

    def summaries(self, state: str | None = None) -> list[dict[str, Any]]:
        rows = [e.summary() for e in (*self.live.values(), *self.ended.values())]
        return [r for r in rows if state is None or r["state"] == state]

    async def cancel_as(self, session: str, by: str, reason: Any = None) -> Any:
        e = self.entry(session)
        if e.record is not None:
            raise WireError(ErrorCode.CONFLICT, f"session {e.id} has ended ({e.state})")
        if reason is not None and not isinstance(reason, str):
            raise WireError(ErrorCode.BAD_REQUEST, "reason must be a string")
        return await self._to_worker(e, "session.cancel", {"session": e.id, "by": by,
                                                           "reason": reason})

    async def decide(self, session: str, decision: Any) -> Any:
        e = self.entry(session)
        if e.record is not None:
            raise WireError(ErrorCode.CONFLICT, f"session {e.id} has ended ({e.state})")
        return await self._to_worker(e, "session.decide", {"session": e.id,
                                                           "decision": decision})

    async def to_worker(self, e: Entry, op: str, args: dict[str, Any]) -> Any:
        return await self._to_worker(e, op, args)

    async def _to_worker(self, e: Entry, op: str, args: dict[str, Any]) -> Any:
        """Forward to the session's worker. A session that ends while the request is on its
        way is answered `conflict` (its final record arrives just before the reply)."""
        try:
            return await self.calls.call(e.shard, op, args, ADMIN)
        except WireError as exc:
            if exc.code == ErrorCode.NOT_FOUND and e.record is not None:
                raise WireError(ErrorCode.CONFLICT, f"session {e.id} has ended "
                                f"({e.state})") from None
            raise

    # --- from workers ----------------------------------------------------------------------

    def on_push(self, index: int, body: dict[str, Any]) -> list[str]:
        """Push an invitation/notice to each agent; returns the ids that cannot be reached."""
        unreachable = []
        op, payload = str(body.get("op")), body.get("body") or {}
        # An invitation names the session's worker: its shard endpoint takes the answer in
        # one hop. (Another node's agents get it through node.push, without: they answer
        # through their node.)
        hop = {"shard": index} if op == "session.invite" else {}
        for agent in body.get("agents") or []:
            rec = self.registry.agents.get(agent)
            if rec is None:
                if self.remote is None or not self.remote.push(index, agent, op,
                                                               {**payload, "to": agent}):
                    unreachable.append(agent)
            elif not self.endpoint.push(rec.conn, next(self._push_ids), op,
                                        {**payload, "to": agent, **hop}):
                unreachable.append(agent)
        return unreachable

    def on_event(self, body: dict[str, Any]) -> None:
        topic, payload = str(body.get("topic")), body.get("body") or {}
        self.events.publish(topic, payload)
        e = self.live.get(payload.get("session"))  # type: ignore[arg-type]
        if e is not None and topic in ("session.started", "session.escalated"):
            e.state = "collecting" if topic == "session.started" else "escalated"

    def on_ended(self, record: dict[str, Any]) -> None:
        # What the audit log keeps beyond the record (engine.py _audit): not kept here, nor
        # sent to the initiator -- a market's order log can be long.
        extra = record.pop("audit", None)
        e = self.live.pop(str(record.get("session")), None)
        if e is None:
            return
        e.record = {**record, "shard": e.shard}
        e.state = str(record.get("state"))
        self.stats[e.state] = self.stats.get(e.state, 0) + 1
        key = (e.protocol, e.state)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        self.durations.observe(e.protocol, time.monotonic() - e.started)
        if e.state == "applied" and isinstance(record.get("result"), dict):
            self._count_trade(e.protocol, record["result"])
        if self.settings.keep_finished:
            self.ended[e.id] = e
            while len(self.ended) > self.settings.keep_finished:
                self.ended.popitem(last=False)
        if not e.done.done():
            e.done.set_result(e.record)
        if e.notify:
            rec = self.registry.agents.get(e.initiator)
            if rec is not None:
                self.endpoint.push(rec.conn, next(self._push_ids), "session.result",
                                   {**e.record, "to": e.initiator})
        # Last: the initiator's answer is on its way before the audit record is made.
        if self.on_outcome is not None or self.on_ended_extra:
            full = {**e.record, **(extra if isinstance(extra, dict) else {})}
            if self.on_outcome is not None:
                self.on_outcome(full)
            for reader in self.on_ended_extra:
                reader(full)

    def _count_trade(self, name: str, result: dict[str, Any]) -> None:
        proto = self.protocols.get(name)
        if proto is None:
            return
        try:
            trade = proto.trade(result)
            if trade is None:
                return
            revenue, prices = float(trade.revenue), [float(p) for p in trade.prices]
        except Exception:  # a plugin's bug costs its metric, not the session's record
            log.exception("protocol %s: trade() failed on an applied outcome", name)
            return
        t = self.trades.setdefault(name, [0.0, 0, 0.0, math.nan])
        t[0] += revenue
        if prices:
            t[1] += len(prices)
            t[2] += sum(prices)
            t[3] = prices[-1]

    def worker_down(self, index: int) -> None:
        for e in [e for e in self.live.values() if e.shard == index]:
            record = {**e.summary(), "state": "failed", "reason": "worker_restarted",
                      "note": "the session's worker died; nothing of its outcome was applied "
                              "unless its variables show modified_by session:" + e.id,
                      "result": None, "writes": {}}
            self.events.publish("session.failed", {"session": e.id, "protocol": e.protocol,
                                                   "reason": "worker_restarted"})
            self.on_ended(record)

    def live_shards(self) -> set[int]:
        return {e.shard for e in self.live.values()}
