"""Pushes that leave the session's worker itself: invitations and notices, sent straight to
the participants' connections on this worker's shard endpoint.

Why: through the arbiter, every invitation was a link message to the arbiter and then one
frame per participant from it -- a wake-up in a third process on the session's critical
path, and the arbiter's CPU spent on traffic rather than on identities and routing. The
SDK already keeps a connection (a route, client/routes.py) to each worker for one-hop
writes and answers, so it can take pushes there too.

How an agent gets its pushes here: it sends `session.attach` (its id and the write
credential issued at hello) on its route to this worker. The credential proves the
connection speaks for the agent, as it does for a write; the worker notes that connection's
routing id, the latest attach winning. Until an agent is attached, or whenever a push to it
here fails, its pushes go through the arbiter as before; the SDK attaches again when an
invitation of this shard reaches it that way.

When an attachment ends, so that no push goes to a connection that no longer speaks for the
agent:
- the arbiter revokes the agent's credential (bye, the agent gone silent, its id taken over
  by another connection): the revocation drops the attachment made with it;
- a send fails: EHOSTUNREACH (ROUTER_MANDATORY) means the connection is gone, and the
  attachment with it; EAGAIN means the client is not reading (its queue is at the high-water
  mark): this push goes through the arbiter, whose queue to that client is separate, and
  the attachment stays;
- the worker restarts: attachments live in its memory only, so a new worker starts with
  none, and the first invitation through the arbiter brings each agent back.

Order: one worker's pushes to one agent keep their order (one connection). Pushes through
the arbiter -- messages between agents, a session's result to its initiator, a push this
worker could not send directly -- travel another connection and are not ordered against
them, as pushes of two sessions on two workers never were.

Bounded: one entry per agent with a valid credential, dropped at revocation.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import zmq

from mabeamd.net import wire
from mabeamd.net.frames import NOBLOCK, send_frames

log = logging.getLogger(__name__)

ATTACH = "session.attach"
ATTACH_FIELDS = frozenset({"agent", "credential"})


def credential_epoch(credential: str) -> int:
    """The epoch of a credential that checked out (agents/credentials.py: "<epoch>.<mac>")."""
    return int(credential.partition(".")[0])


class Attachments:
    """agent -> (routing id on the shard endpoint, the attaching credential's epoch)."""

    def __init__(self) -> None:
        self._conns: dict[str, tuple[bytes, int]] = {}
        self._ids = itertools.count(1)
        self.stats = {"attached": 0, "pushed": 0, "gone": 0, "full": 0}

    def __len__(self) -> int:
        return len(self._conns)

    def attach(self, agent: str, routing_id: bytes, epoch: int) -> None:
        self._conns[agent] = (routing_id, epoch)
        self.stats["attached"] += 1

    def revoke(self, agents: dict[str, int]) -> None:
        """The arbiter's revocations (agent -> highest revoked epoch): attachments made with
        those credentials end."""
        for agent, epoch in agents.items():
            conn = self._conns.get(agent)
            if conn is not None and conn[1] <= epoch:
                del self._conns[agent]

    def push(self, sock: zmq.Socket[Any], shard: int, body: dict[str, Any]) -> list[str]:
        """Send a session engine's push ({"agents", "op", "body"}) to each attached agent;
        returns the agents it did not reach, for the arbiter to push to. Each push is the
        arbiter's (header {"push": op, "id"}, body with "to" and, for an invitation, the
        shard that takes the answer), so a client cannot tell the two paths apart."""
        op, payload = str(body.get("op")), body.get("body") or {}
        hop = {"shard": shard} if op == "session.invite" else {}
        rest: list[str] = []
        for agent in body.get("agents") or ():
            conn = self._conns.get(agent)
            if conn is None:
                rest.append(agent)
                continue
            frames = [conn[0], *wire.encode({"push": op, "id": next(self._ids)},
                                            {**payload, "to": agent, **hop})]
            try:
                send_frames(sock, frames, NOBLOCK)
            except zmq.Again:  # not reading now: the arbiter's queue to it is separate
                self.stats["full"] += 1
                rest.append(agent)
                continue
            except zmq.ZMQError as exc:  # EHOSTUNREACH: that connection is gone
                log.debug("push to %s: its attached connection is gone (%s)", agent, exc)
                self.stats["gone"] += 1
                if self._conns.get(agent) == conn:
                    del self._conns[agent]
                rest.append(agent)
                continue
            self.stats["pushed"] += 1
        return rest
