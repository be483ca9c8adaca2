"""What both clients (aio.py, sync.py) hand the daemon and get from it unasked: an agent's
registration as hello carries it, the body of a write, and a push."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Push:
    """A message the daemon sent unasked: `op` says what it is (e.g. "message")."""

    op: str
    id: int
    body: dict[str, Any]


class Pushes:
    """Pushes not yet read: the connection's queue, and one per agent that reads only its
    own (Agents sharing one client: without it, agent B's loop could take, and answer as
    B, an invitation addressed to agent A). A push goes to its "to" agent's queue if that
    agent has one, else to the connection's. Each queue holds at most `maxsize`; one
    more is dropped and counted."""

    def __init__(self, maxsize: int) -> None:
        self.all: asyncio.Queue[Push] = asyncio.Queue(maxsize)
        self._by_agent: dict[str, asyncio.Queue[Push]] = {}
        self.dropped = 0

    def put(self, push: Push) -> None:
        to = push.body.get("to")
        queue = self._by_agent.get(to, self.all) if isinstance(to, str) else self.all
        try:
            queue.put_nowait(push)
        except asyncio.QueueFull:
            self.dropped += 1

    def of(self, agent: str) -> asyncio.Queue[Push]:
        queue = self._by_agent.get(agent)
        if queue is None:
            queue = self._by_agent[agent] = asyncio.Queue(self.all.maxsize)
        return queue

    def release(self, agent: str) -> None:
        self._by_agent.pop(agent, None)


@dataclass
class Registration:
    agent: str
    capabilities: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0
    priority: int = 0
    token: str | None = None
    credential: str | None = None  # for writes on shard endpoints (from hello)

    def hello(self) -> dict[str, Any]:
        body: dict[str, Any] = {"agent": self.agent, "capabilities": self.capabilities,
                                "metadata": self.metadata, "weight": self.weight,
                                "priority": self.priority}
        if self.token:
            body["token"] = self.token
        return body


def create_body(agent: str, name: str, value: Any, *, type: str, access: str,
                writers: list[str] | None, policy: str,
                constraints: dict[str, Any] | None) -> dict[str, Any]:
    """The body of var.create."""
    body: dict[str, Any] = {"agent": agent, "name": name, "value": value, "type": type,
                            "access": access, "policy": policy}
    if writers is not None:
        body["writers"] = writers
    if constraints is not None:
        body["constraints"] = constraints
    return body


def write_body(agent: str, name: str, expect_version: int | None = None,
               **fields: Any) -> dict[str, Any]:
    """The body of var.set / var.delete."""
    body: dict[str, Any] = {"agent": agent, "name": name, **fields}
    if expect_version is not None:
        body["expect_version"] = expect_version
    return body
