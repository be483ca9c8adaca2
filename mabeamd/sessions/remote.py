"""Sessions with participants on other nodes (cluster mode), in the arbiter.

A session runs on the node where it was started (in the worker of its variables' shard),
and its participants may be registered anywhere in the cluster. The session service
resolves them in the cluster's directory (cluster/directory.py) as well as in its own
registry; the invitations for agents of another node go to that node as `node.push`, which
pushes them to its agent and remembers which node the session runs on; that agent's
`session.respond`, sent to its own node as always, is handed on to the session's node as
`node.respond`. An agent of another node that leaves the directory (bye, gone, its node
dead) is told to the session's workers like a local one: absent. `session.get` and
`session.cancel` of a session this node does not hold go to the node its id names (ids are
s<node>.<random>-<n>) as `node.get_session` / `node.cancel_session`, so any node answers for
any session. Every node op carries the cluster's token and is refused without it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mabeamd.agents.registry import check_agent_id
from mabeamd.net.wire import ErrorCode, WireError, check_fields

if TYPE_CHECKING:
    from mabeamd.agents.endpoint import Request
    from mabeamd.cluster.directory import Directory
    from mabeamd.sessions.service import SessionService

log = logging.getLogger(__name__)
KNOWN = 10_000  # sessions of other nodes remembered here (their invitations' sessions)
# A cluster session id: the node's name, then the random part and the counter (service.py).
SESSION_ID = re.compile(r"s(?P<node>.+)\.[0-9a-f]{4}-[0-9]+")


class RemoteSessions:
    def __init__(self, service: SessionService, directory: Directory,
                 agents_down: Callable[[int, list[str]], object]) -> None:
        """`agents_down(worker, agents)`: tell a session's worker its participants are
        unreachable (an invitation another node did not take)."""
        self.service = service
        self.directory = directory
        self.agents_down = agents_down
        self.known: OrderedDict[str, str] = OrderedDict()  # session -> the node running it
        # Session ids name their node in a cluster (s<node>.<random>-<n>): two nodes' random
        # prefixes alone could meet.
        service.id_prefix(f"{directory.node}.")
        self._tasks: set[asyncio.Task[None]] = set()
        service.endpoint.handlers.update({"node.push": self.node_push,
                                          "node.respond": self.node_respond,
                                          "node.get_session": self.node_get_session,
                                          "node.cancel_session": self.node_cancel_session})

    # --- the sessions of this node ------------------------------------------------------------

    def participant(self, agent_id: str) -> dict[str, Any] | None:
        rec = self.directory.remote(agent_id)
        if rec is None:
            return None
        return {"id": rec["id"], "weight": rec.get("weight", 1.0),
                "priority": rec.get("priority", 0), "metadata": rec.get("metadata") or {}}

    def matching(self, q: dict[str, Any]) -> list[dict[str, Any]]:
        return [p for r in self.directory.remote_matching(q)
                if (p := self.participant(r["id"])) is not None]

    def push(self, index: int, agent: str, op: str, body: dict[str, Any]) -> bool:
        """An invitation or notice for an agent of another node: handed on in the
        background; False if no node has the agent."""
        rec = self.directory.remote(agent)
        if rec is None:
            return False

        async def hand_on() -> None:
            try:
                await self.directory.to_node(str(rec["node"]), "node.push",
                                             {"agent": agent, "op": op, "body": body},
                                             f"{op} for {agent!r}")
            except WireError as exc:
                log.info("%s for %s on node %s not delivered: %s", op, agent, rec["node"],
                         exc.message)
                self.agents_down(index, [agent])

        task = asyncio.ensure_future(hand_on())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    # --- the sessions of other nodes ----------------------------------------------------------

    def node_of(self, session: Any) -> str | None:
        """The node running `session`, when it is another one: remembered from its
        invitations, else read from the id."""
        if not isinstance(session, str):
            return None
        node = self.known.get(session)
        if node is None and (m := SESSION_ID.fullmatch(session)) is not None:
            node = m["node"]
        return node if node != self.directory.node else None

    async def get(self, node: str, session: str) -> Any:
        return await self.directory.to_node(node, "node.get_session", {"session": session},
                                            f"session.get of {session}")

    async def cancel(self, node: str, agent: str, session: str, reason: Any) -> Any:
        body = {"agent": agent, "session": session}
        if reason is not None:
            body["reason"] = reason
        return await self.directory.to_node(node, "node.cancel_session", body,
                                            f"{agent}'s session.cancel of {session}")

    async def respond(self, node: str, agent: str, body: dict[str, Any]) -> Any:
        """An answer of our agent to a session of another node: to that node."""
        return await self.directory.to_node(
            node, "node.respond", {"agent": agent, "session": body["session"],
                                   "round": body["round"], "response": body.get("response")},
            f"{agent}'s answer to session {body['session']}")

    def node_push(self, req: Request, body: dict[str, Any]) -> Any:
        """node.push: another node's session invites (or tells) one of our agents."""
        self.directory.check_token(body)
        check_fields(body, "node.push", {"token", "node", "agent", "op", "body"},
                     {"token", "node", "agent", "op", "body"})
        agent = check_agent_id(body["agent"])
        payload, op = body["body"], body["op"]
        if not isinstance(payload, dict) or not isinstance(op, str) or \
                not op.startswith("session."):
            raise WireError(ErrorCode.BAD_REQUEST, "node.push: op must be a session push "
                            "and body a map")
        rec = self.service.registry.agents.get(agent)
        if rec is None:
            raise WireError(ErrorCode.NOT_FOUND, f"no agent {agent!r} on this node")
        session = payload.get("session")
        if isinstance(session, str) and isinstance(body["node"], str):
            self.known[session] = body["node"]
            self.known.move_to_end(session)
            while len(self.known) > KNOWN:
                self.known.popitem(last=False)
        if not self.service.endpoint.push(rec.conn, self.service.next_push_id(), op,
                                          {**payload, "to": agent}):
            raise WireError(ErrorCode.BUSY, f"agent {agent!r} is not reading its pushes")
        return {"pushed": True}

    async def node_get_session(self, req: Request, body: dict[str, Any]) -> Any:
        """node.get_session: session.get, asked on another node, of a session of ours."""
        self.directory.check_token(body)
        check_fields(body, "node.get_session", {"token", "node", "session"},
                     {"token", "session"})
        return await self.service.show(body["session"])

    async def node_cancel_session(self, req: Request, body: dict[str, Any]) -> Any:
        """node.cancel_session: an agent of another node (checked there) cancels a session
        of ours; as here, only its initiator may."""
        self.directory.check_token(body)
        check_fields(body, "node.cancel_session", {"token", "node", "agent", "session",
                                                   "reason"}, {"token", "agent", "session"})
        return await self.service.cancel_by(check_agent_id(body["agent"]), body["session"],
                                            body.get("reason"))

    async def node_respond(self, req: Request, body: dict[str, Any]) -> Any:
        """node.respond: an answer to one of our sessions from an agent of another node
        (that node checked the agent is its caller's)."""
        self.directory.check_token(body)
        check_fields(body, "node.respond", {"token", "node", "agent", "session", "round",
                                            "response"}, {"token", "agent", "session", "round"})
        agent = check_agent_id(body["agent"])
        if isinstance(body["round"], bool) or not isinstance(body["round"], int):
            raise WireError(ErrorCode.BAD_REQUEST, "round must be an integer")
        e = self.service.entry(body["session"])
        if e.record is not None:
            raise WireError(ErrorCode.CONFLICT, f"session {e.id} has ended ({e.state})")
        return await self.service.to_worker(e, "session.respond", {
            "session": e.id, "agent": agent, "round": body["round"],
            "response": body.get("response")})
