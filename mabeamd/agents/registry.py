"""The agent registry: who is registered, from which connection, and who is still alive.

Pure data (no sockets, no clock of its own) so every rule is unit-tested directly:

- An agent id is owned by the connection that registered it. Another connection may take it
  over only by proving it is the same agent: the same CURVE identity, or the resume token
  handed out at registration (the SDK presents it when it reconnects; managed agents get
  theirs in the environment).
- Ids in a key's namespace (NAME and NAME/...) may be registered only by the client
  authenticated with key NAME.
- Each binding of an id to a connection gets a new *epoch* (a counter of this run): the
  write credential (credentials.py) names it, and `on_revoke(id, epoch)` is called when that
  binding ends (deregistered, or taken over by another connection).
- Liveness: any request from an agent counts as a heartbeat. Silent for `unhealthy_after`
  seconds -> unhealthy; silent `gone_after` seconds more -> gone (removed).

Agents are kept in least-recently-seen order, so a liveness sweep touches only the agents that
are actually overdue.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, WireError

ConnKey = tuple[int, bytes]  # (endpoint socket index, ZeroMQ routing id)

AGENT_ID = re.compile(r"^[A-Za-z0-9_.:@-][A-Za-z0-9_.:@/-]{0,127}$")
MAX_CAPABILITIES = 64
MAX_CAPABILITY_LEN = 64
MAX_METADATA_BYTES = 4096
HEALTHY, UNHEALTHY = "healthy", "unhealthy"


@dataclass(slots=True)
class AgentRecord:
    id: str
    conn: ConnKey
    capabilities: tuple[str, ...]
    metadata: dict[str, Any]
    weight: float
    priority: int
    principal: str | None  # the CURVE key name it authenticated with, if any
    token: str
    registered_at: float  # wall clock
    last_seen: float  # monotonic
    status: str = HEALTHY
    managed: str | None = None
    epoch: int = 0

    def public(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id, "status": self.status, "capabilities": list(self.capabilities),
            "metadata": self.metadata, "weight": self.weight, "priority": self.priority,
            "principal": self.principal, "managed": self.managed,
            "registered_at": self.registered_at, "last_seen_age": round(now - self.last_seen, 3),
        }


def check_agent_id(value: Any, field: str = "agent") -> str:
    if not isinstance(value, str) or not AGENT_ID.match(value):
        raise WireError(ErrorCode.BAD_REQUEST,
                        f"{field} must be 1-128 characters of letters, digits and _.:@-/ "
                        "(not starting with '/')")
    return value


def _check_registration(body: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, Any], float,
                                                       int]:
    caps = body.get("capabilities", [])
    if (not isinstance(caps, list) or len(caps) > MAX_CAPABILITIES
            or not all(isinstance(c, str) and 0 < len(c) <= MAX_CAPABILITY_LEN for c in caps)):
        raise WireError(ErrorCode.BAD_REQUEST, f"capabilities must be a list of at most "
                        f"{MAX_CAPABILITIES} strings of 1-{MAX_CAPABILITY_LEN} characters")
    meta = body.get("metadata", {})
    if not isinstance(meta, dict):
        raise WireError(ErrorCode.BAD_REQUEST, "metadata must be a map")
    if len(wire.pack(meta)) > MAX_METADATA_BYTES:
        raise WireError(ErrorCode.TOO_LARGE, f"metadata over {MAX_METADATA_BYTES} bytes")
    weight = body.get("weight", 1.0)
    if (isinstance(weight, bool) or not isinstance(weight, (int, float))
            or not math.isfinite(weight) or weight < 0):
        raise WireError(ErrorCode.BAD_REQUEST, "weight must be a finite number >= 0")
    priority = body.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > 2**31:
        raise WireError(ErrorCode.BAD_REQUEST, "priority must be an integer")
    return tuple(dict.fromkeys(caps)), meta, float(weight), priority


class Registry:
    def __init__(self, max_agents: int, owner_of: Callable[[str], str | None] | None = None,
                 on_revoke: Callable[[str, int], None] = lambda agent_id, epoch: None,
                 ) -> None:
        self.max_agents = max_agents
        self.owner_of = owner_of or (lambda _id: None)
        self.agents: dict[str, AgentRecord] = {}
        self._by_capability: dict[str, set[str]] = {}
        self._order: OrderedDict[str, None] = OrderedDict()  # least recently seen first
        # Every id, sorted: a discovery page is a bisect and a walk, not a sort of everything.
        # (insort/remove move pointers in C: cheap even at 100,000 agents.)
        self._sorted: list[str] = []
        self._preassigned: dict[str, tuple[str, str]] = {}  # id -> (token, managed name)
        self._epochs = itertools.count(1)
        self.on_revoke = on_revoke

    def __len__(self) -> int:
        return len(self.agents)

    # --- registration ----------------------------------------------------------------------

    def preassign(self, agent_id: str, token: str, managed: str) -> None:
        """Reserve the resume token a managed agent will present (from its environment)."""
        self._preassigned[agent_id] = (token, managed)

    def release(self, agent_id: str) -> None:
        self._preassigned.pop(agent_id, None)

    def register(self, agent_id: str, conn: ConnKey, principal: str | None,
                 body: dict[str, Any], *, now: float, wall: float) -> tuple[AgentRecord, bool]:
        """Register or update `agent_id`; returns (record, created). Raises WireError."""
        check_agent_id(agent_id)
        caps, meta, weight, priority = _check_registration(body)
        token = body.get("token")
        owner = self.owner_of(agent_id)
        if owner is not None and owner != principal:
            raise WireError(ErrorCode.FORBIDDEN, f"agent id {agent_id!r} belongs to key "
                            f"{owner!r}; authenticate with that key to register it")
        rec = self.agents.get(agent_id)
        if rec is not None:
            same = rec.conn == conn or (principal is not None and principal == rec.principal)
            if not same and not (isinstance(token, str) and
                                 secrets.compare_digest(token, rec.token)):
                raise WireError(ErrorCode.EXISTS, f"agent id {agent_id!r} is registered from "
                                "another connection; present its token to take it over")
            self._unindex(rec)
            if rec.conn != conn:  # taken over: the old connection's credential ends here
                self.on_revoke(agent_id, rec.epoch)
                rec.epoch = next(self._epochs)
            rec.conn, rec.principal = conn, principal
            rec.capabilities, rec.metadata, rec.weight, rec.priority = caps, meta, weight, priority
            self._index(rec)
            self.touch(agent_id, now)
            return rec, False
        if len(self.agents) >= self.max_agents:
            raise WireError(ErrorCode.BUSY, f"the registry is full ({self.max_agents} agents)")
        pre = self._preassigned.get(agent_id)
        rec = AgentRecord(
            agent_id, conn, caps, meta, weight, priority, principal,
            pre[0] if pre else secrets.token_urlsafe(16), wall, now,
            managed=pre[1] if pre else None, epoch=next(self._epochs))
        self.agents[agent_id] = rec
        self._order[agent_id] = None
        bisect.insort(self._sorted, agent_id)
        self._index(rec)
        return rec, True

    def _index(self, rec: AgentRecord) -> None:
        for cap in rec.capabilities:
            self._by_capability.setdefault(cap, set()).add(rec.id)

    def _unindex(self, rec: AgentRecord) -> None:
        for cap in rec.capabilities:
            ids = self._by_capability.get(cap)
            if ids is not None:
                ids.discard(rec.id)
                if not ids:
                    del self._by_capability[cap]

    def deregister(self, agent_id: str) -> AgentRecord | None:
        rec = self.agents.pop(agent_id, None)
        if rec is not None:
            self._order.pop(agent_id, None)
            del self._sorted[bisect.bisect_left(self._sorted, agent_id)]
            self._unindex(rec)
            self.on_revoke(agent_id, rec.epoch)
        return rec

    def conn_of(self, agent_id: str) -> ConnKey | None:
        """The connection the agent is registered on, if it is."""
        rec = self.agents.get(agent_id)
        return rec.conn if rec is not None else None

    def owned(self, agent_id: str, conn: ConnKey) -> AgentRecord:
        """The record, if this connection may act for it (else not_registered)."""
        rec = self.agents.get(agent_id)
        if rec is None or rec.conn != conn:
            raise WireError(ErrorCode.NOT_REGISTERED,
                            f"agent {agent_id!r} is not registered on this connection")
        return rec

    # --- liveness --------------------------------------------------------------------------

    def touch(self, agent_id: str, now: float) -> bool:
        """A sign of life; True if the agent was unhealthy and is healthy again."""
        rec = self.agents.get(agent_id)
        if rec is None:
            return False
        rec.last_seen = now
        self._order.move_to_end(agent_id)
        if rec.status == UNHEALTHY:
            rec.status = HEALTHY
            return True
        return False

    def sweep(self, now: float, unhealthy_after: float, gone_after: float,
              ) -> tuple[list[AgentRecord], list[AgentRecord]]:
        """Apply the liveness rules; returns (newly unhealthy, gone). Gone agents are removed."""
        unhealthy: list[AgentRecord] = []
        gone: list[AgentRecord] = []
        for agent_id in list(self._order):
            rec = self.agents[agent_id]
            silent = now - rec.last_seen
            if silent <= unhealthy_after:
                break  # everything after this one was seen more recently
            if rec.status == HEALTHY:
                rec.status = UNHEALTHY
                unhealthy.append(rec)
            if silent > unhealthy_after + gone_after:
                gone.append(rec)
        for rec in gone:
            self.deregister(rec.id)
        return unhealthy, gone

    # --- queries ---------------------------------------------------------------------------

    def connection_agents(self, conn: ConnKey) -> list[str]:
        return [a.id for a in self.agents.values() if a.conn == conn]

    def discover(self, *, capabilities: Iterable[str] = (), status: str | None = None,
                 metadata: dict[str, Any] | None = None, prefix: str = "",
                 after: str = "", limit: int = 100) -> tuple[list[AgentRecord], str | None]:
        """Agents matching every criterion, sorted by id, one page at a time.

        Returns (page, cursor): pass the cursor as `after` for the next page (None at the end).
        """
        caps = list(capabilities)
        candidates: Iterable[str]
        if caps:
            sets = sorted((self._by_capability.get(c, set()) for c in caps), key=len)
            matched = set.intersection(*sets) if len(sets) > 1 else sets[0]
            candidates = sorted(i for i in matched if i > after)
        else:
            start = bisect.bisect_right(self._sorted, after)
            if prefix:
                start = max(start, bisect.bisect_left(self._sorted, prefix))
            candidates = itertools.islice(self._sorted, start, None)
        out = []
        for agent_id in candidates:
            if not agent_id.startswith(prefix):
                if not caps and agent_id > prefix:
                    break  # sorted: past the prefix range
                continue
            rec = self.agents[agent_id]
            if status is not None and rec.status != status:
                continue
            if metadata and any(rec.metadata.get(k) != v for k, v in metadata.items()):
                continue
            out.append(rec)
            if len(out) > limit:
                break
        if len(out) > limit:
            return out[:limit], out[limit - 1].id
        return out, None

    def counts(self) -> dict[str, int]:
        c = {HEALTHY: 0, UNHEALTHY: 0}
        for rec in self.agents.values():
            c[rec.status] += 1
        return {"total": len(self.agents), **c}
