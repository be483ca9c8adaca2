"""The event endpoint: an XPUB socket publishing what happens, by topic.

Each event is two frames: the topic (UTF-8, e.g. ``agent.registered``) and a msgpack map
with at least ``seq`` (one counter across all topics), ``family_seq`` (one counter per topic
family, the text before the first dot: a subscriber to whole families, such as ``agent.``,
can tell missed events from other families' events by it), ``time`` (UNIX seconds) and the
event's fields (in cluster mode also ``node``). Subscribers filter by topic prefix
(``agent.``, ``worker.``). ZeroMQ drops events for a subscriber that falls more than
``events.hwm`` behind; the sequence numbers let it see that it missed some.

The publisher also knows which topic prefixes are subscribed (XPUB passes each prefix's
first subscription and last unsubscription up), so producers elsewhere can skip building
events nobody receives: workers send the `var.*` events of writes served on their shard
endpoints only while some subscription covers them (`on_interest`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from mabeamd.addresses import Endpoint
from mabeamd.net import wire
from mabeamd.net.zmqutil import bind_endpoint, curve_server, unlink_endpoint

log = logging.getLogger(__name__)


class EventPublisher:
    def __init__(self, ctx: zmq.asyncio.Context | None, endpoint: Endpoint | None, hwm: int,
                 curve_keys: tuple[bytes, bytes] | None = None, *,
                 on_interest: Callable[[], None] = lambda: None,
                 node: str | None = None) -> None:
        self.endpoint = endpoint
        # Cluster mode: the node's name, in every event that does not name one itself (a
        # `var.*` event names the node that wrote the variable, or null when unknown).
        self.node = node
        self.seq = 0
        self.family_seq: dict[str, int] = {}  # bounded: families are the daemon's own words
        self.published = 0
        # Events the socket refused. A slow subscriber's own queue overflowing is not seen
        # here (libzmq drops for that subscriber alone, silently): it sees a gap in `seq`.
        self.dropped = 0
        self.subscriptions = 0
        self.topics: set[bytes] = set()  # subscribed prefixes
        # Called with a topic family (e.g. "var.") whenever whether it is watched may change.
        self.on_interest = on_interest
        # In-process readers of every event (the console's feed), called before the send.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.sock: zmq.asyncio.Socket | None = None
        if ctx is None or endpoint is None:
            return
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.LINGER, 0)
        if endpoint.curve:
            curve_server(sock, curve_keys)
        self.sock = sock

    def bind(self) -> None:
        if self.sock is not None and self.endpoint is not None:
            bind_endpoint(self.sock, self.endpoint)

    async def run(self) -> None:
        """Read subscription messages (XPUB queues them; unread they would pile up)."""
        if self.sock is None:
            return
        while True:
            msg = await self.sock.recv()
            if msg[:1] == b"\x01":
                self.subscriptions += 1
                self.topics.add(msg[1:])
            elif msg[:1] == b"\x00":
                self.subscriptions = max(0, self.subscriptions - 1)
                self.topics.discard(msg[1:])
            else:
                continue
            self.on_interest()

    def watched(self, family: str) -> bool:
        """Whether some subscription receives events of `family` (a topic prefix such as
        "var."): a subscribed prefix that covers it or lies inside it."""
        f = family.encode()
        return any(f.startswith(t) or t.startswith(f) for t in self.topics)

    def publish(self, topic: str, fields: dict[str, Any]) -> None:
        self.seq += 1
        family = topic.partition(".")[0]
        fseq = self.family_seq[family] = self.family_seq.get(family, 0) + 1
        if self.sock is None and not self.listeners:
            return
        body = {"seq": self.seq, "family_seq": fseq, "time": time.time(), **fields}
        for listener in self.listeners:
            try:
                listener(topic, body)
            except Exception:  # a reader's bug must not cost the event its subscribers
                log.exception("event listener failed on %s", topic)
        if self.sock is None:
            return
        if self.node is not None and "node" not in body:
            body["node"] = self.node
        try:
            # XPUB never blocks: a full subscriber queue drops for that subscriber alone.
            self.sock.send_multipart([topic.encode(), wire.pack(body)], flags=zmq.NOBLOCK)
            self.published += 1
        except zmq.ZMQError as exc:
            self.dropped += 1
            log.debug("event %s not published: %s", topic, exc)

    def publish_write(self, event: Any) -> None:
        """A variable write's event (from a worker, durable by then) as `var.<name>`."""
        if isinstance(event, dict):
            self.publish(f"var.{event.get('name')}", event)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            if self.endpoint is not None:
                unlink_endpoint(self.endpoint)
