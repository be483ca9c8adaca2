"""A worker's own endpoint for variable requests: one hop instead of two.

Through the agent endpoint a variable request crosses two processes each way (agent ->
arbiter -> worker -> arbiter -> agent), and on this project's machines one cross-process hop
costs about as much as everything the worker does for a request (docs/benchmarks.md). So each
worker also binds a ROUTER of its own, at `[agents] shard_endpoint` (worker i: PORT+i, or
PATH-i), and serves `var.get`, `var.history`, `var.create`, `var.set` and `var.delete` for
its shard there, speaking the same wire protocol as the agent endpoint. Clients learn the
addresses at hello and route by shard (sharding.py); `var.list` (it spans every shard),
sessions and everything else stay on the agent endpoint.

Who writes: a write names its agent and carries the credential the arbiter issued to that
agent at hello (credentials.py); the worker checks it without asking the arbiter. Until the
arbiter has sent a new worker the revocations so far, writes are answered `busy`.

Rate limits ([limits], net/ratelimit.py) apply here as on the agent endpoint, counted by
this worker alone: per connection for every well-formed request, and per agent for
writes, once their credential is checked (reads name no agent; an unchecked name could
spend another agent's bucket). The arbiter sends the settings at hello and on reload.

This module is transport and admission only; the shard (shard.py) does the work, and the
worker (worker/main.py) drains this socket like its link, committing the WAL once per batch
before any reply leaves.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, NamedTuple

import zmq

from mabeamd.addresses import parse_endpoint
from mabeamd.agents.admission import Authorize, WriteAdmission
from mabeamd.agents.credentials import Verifier
from mabeamd.cluster.pending import Pending
from mabeamd.net import wire
from mabeamd.net.frames import NOBLOCK, send_frames
from mabeamd.net.ratelimit import Limits, build
from mabeamd.net.wire import ErrorCode, WireError
from mabeamd.net.zmqutil import agent_router, bind_endpoint, unlink_endpoint
from mabeamd.observe.opstats import OK, OpStats
from mabeamd.storage.variables import ADMIN, READ_OPS, WRITE_FIELDS, check_read

log = logging.getLogger(__name__)

# (op, args, actor) -> (result, event or None); raises WireError: the shard's handle().
Serve = Callable[[str, dict[str, Any], str], tuple[Any, dict[str, Any] | None]]
Reply = tuple[list[bytes], dict[str, Any] | None]  # frames with envelope, the write's event
Served = Reply | Coroutine[Any, Any, Reply]


class _Call(NamedTuple):
    """A request being answered: what its reply and its statistics need."""

    envelope: list[bytes]
    rid: int | str | None
    op: str
    agent: str | None
    body: dict[str, Any]
    t0: float


class ShardEndpoint:
    def __init__(self, ctx: zmq.Context[Any], address: str, max_message: int,
                 verifier: Verifier, authorize: Authorize) -> None:
        self.address = address
        self.max_message = max_message
        self.verifier = verifier
        self.admission = WriteAdmission(self._credited, authorize, ("credential",))
        self.writes_open = False  # set once the arbiter's revocations have arrived
        self.stats = {"requests": 0, "errors": 0, "undeliverable": 0, "rate_limited": 0}
        self.limits: Limits | None = None  # None: [limits] off, one test per request
        # By op and code, with latency up to the reply's send (after the batch's WAL
        # commit): observed by sent(); the heartbeat carries its snapshot (metrics).
        self.ops = OpStats(READ_OPS | WRITE_FIELDS.keys())
        self._served: list[tuple[str | None, str, float]] = []
        # Writes refused as forbidden since the worker last looked, for the audit log (the
        # arbiter writes it: worker/main.py sends them on).
        self.refused: list[dict[str, Any]] = []
        # The worker's context: one I/O thread for the link and this socket (on a 2-core
        # machine every extra thread is another wake-up competing for a core).
        self.sock = agent_router(ctx, max_message)

    def bind(self) -> bool:
        """Bind; False (logged) when the address cannot be had: the shard is then served
        through the agent endpoint only, which is slower but complete."""
        ep = parse_endpoint(self.address)
        assert ep is not None
        try:
            bind_endpoint(self.sock, ep)
        except (zmq.ZMQError, OSError) as exc:
            log.error("cannot bind shard endpoint %s (%s): this shard is served through the "
                      "agent endpoint only", self.address, exc)
            return False
        return True

    def serve(self, frames: list[bytes], handle: Serve) -> Served:
        """(reply frames with envelope, the write's event or None) for one message; in
        cluster mode a write's comes later (an awaitable of the same pair). Nothing from
        outside raises out of here."""
        t0 = time.perf_counter()
        self.stats["requests"] += 1
        envelope = frames[:1]
        rid: int | str | None = None
        op, agent = "", None
        body: dict[str, Any] = {}
        try:
            rid, op, body = wire.parse_request(frames[1:], self.max_message)
            agent = body.get("agent")
            if op in READ_OPS:
                if self.limits is not None:
                    self._limit(frames, None)
                check_read(op, body)
                result, event = handle(op, body, ADMIN)
            elif op in WRITE_FIELDS:
                try:
                    agent, args = self.admission.admit(op, body)
                except WireError:
                    if self.limits is not None:  # a refused write costs its connection too
                        self._limit(frames, None)
                    raise
                if self.limits is not None:
                    self._limit(frames, agent)
                result, event = handle(op, args, agent)
            else:
                if self.limits is not None:
                    self._limit(frames, None)
                raise WireError(ErrorCode.UNKNOWN_OP, f"op {op!r} is not served on shard "
                                "endpoints; send it to the agent endpoint")
            if type(result) is Pending:
                return self._later(result, _Call(envelope, rid, op, agent, body, t0))
            self._served.append((op, OK, t0))
            return envelope + wire.reply_ok(rid, result), event
        except Exception as exc:
            return self._failed(exc, _Call(envelope, rid, op, agent, body, t0)), None

    async def _later(self, pending: Pending, call: _Call) -> Reply:
        try:
            result, event = await pending.result
        except Exception as exc:
            return self._failed(exc, call), None
        self._served.append((call.op, OK, call.t0))
        assert call.rid is not None  # parsed: a request without one was refused at once
        return call.envelope + wire.reply_ok(call.rid, result), event

    def _failed(self, error: Exception, call: _Call) -> list[bytes]:
        self.stats["errors"] += 1
        if isinstance(error, WireError):
            self._served.append((call.op, error.code, call.t0))
            if error.code == ErrorCode.FORBIDDEN:
                self.refused.append({"op": call.op, "agent": call.agent,
                                     "name": call.body.get("name"), "reason": error.message,
                                     "via": "shard_endpoint"})
            if error.code == ErrorCode.RATE_LIMITED:
                self.stats["rate_limited"] += 1
            return call.envelope + wire.refusal(call.rid, error)
        self._served.append((call.op, ErrorCode.INTERNAL, call.t0))
        return call.envelope + wire.reply_incident(
            call.rid, log, f"shard endpoint: request {call.rid!r} failed", error)

    def sent(self) -> None:
        """The replies of the requests served since the last call have left: count them
        with their latency."""
        now = time.perf_counter()
        for op, code, t0 in self._served:
            self.ops.observe(op, code, now - t0)
        self._served.clear()

    def configure_limits(self, settings: Mapping[str, Any]) -> None:
        """[limits] as a map; unchanged settings keep the buckets as they are."""
        if self.limits is None or self.limits.settings != dict(settings):
            self.limits = build(settings)

    def _limit(self, frames: list[bytes], agent: str | None) -> None:
        """Charge the request to its connection (the routing id) and its proven agent, or
        raise rate_limited; called after the checks that need no state and before the
        shard sees the request, so a refusal changes nothing."""
        limits = self.limits
        assert limits is not None
        nbytes = sum(map(len, frames)) - len(frames[0]) if limits.counts_bytes else 0
        limits.admit(frames[0], agent, nbytes, time.monotonic())

    def _credited(self, caller: None, agent: str, body: dict[str, Any]) -> None:
        """This path's proof (agents/admission.py): the credential issued at hello, which
        the worker checks without asking the arbiter -- once the arbiter has sent the
        revocations so far."""
        if not self.writes_open:
            raise WireError(ErrorCode.BUSY, "this shard's worker is starting; retry "
                            "or write through the agent endpoint")
        if not self.verifier.check(agent, body.pop("credential")):
            raise WireError(ErrorCode.NOT_REGISTERED, f"no valid credential for agent "
                            f"{agent!r} (it comes with hello, and ends with bye or when "
                            "the agent goes)")

    def send(self, frames: list[bytes]) -> None:
        try:
            send_frames(self.sock, frames, NOBLOCK)
        except zmq.ZMQError:  # the client left (ROUTER_MANDATORY) or is not reading (HWM)
            self.stats["undeliverable"] += 1

    def close(self) -> None:
        self.sock.close(linger=0)
        ep = parse_endpoint(self.address)
        if ep is not None:
            with contextlib.suppress(OSError):
                unlink_endpoint(ep)

