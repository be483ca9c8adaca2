"""A worker's own endpoint for variable requests: one hop instead of two.

Through the agent endpoint a variable request crosses two processes each way (agent ->
arbiter -> worker -> arbiter -> agent), and on this project's machines one cross-process hop
costs about as much as everything the worker does for a request (docs/benchmarks.md). So each
worker also binds a ROUTER of its own, at `[agents] shard_endpoint` (worker i: PORT+i, or
PATH-i), and serves `var.get`, `var.history`, `var.create`, `var.set` and `var.delete` for
its shard there, and `var.batch` of them (agents/batch.py), speaking the same wire protocol
as the agent endpoint. Clients learn the addresses at hello and route by shard
(sharding.py). The shard's sessions use it too: participants answer here
(`session.respond`), and an agent that sends `session.attach` gets this shard's
invitations and notices here (worker/attach.py). `var.list` (it spans every shard), the
start of sessions and everything else stay on the agent endpoint.

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
from mabeamd.agents import batch
from mabeamd.agents.admission import RESPOND, Authorize, WriteAdmission
from mabeamd.agents.credentials import Verifier
from mabeamd.cluster.pending import Pending
from mabeamd.net import wire
from mabeamd.net.frames import NOBLOCK, send_frames
from mabeamd.net.ratelimit import Limits, build
from mabeamd.net.wire import ErrorCode, WireError, check_fields
from mabeamd.net.zmqutil import agent_router, bind_endpoint, unlink_endpoint
from mabeamd.observe.opstats import OK, OpStats
from mabeamd.storage.variables import ADMIN, READ_OPS, WRITE_FIELDS, check_read
from mabeamd.worker.attach import ATTACH, ATTACH_FIELDS, Attachments, credential_epoch

log = logging.getLogger(__name__)

# (op, args, actor) -> (result, event or None); raises WireError: the shard's handle().
Serve = Callable[[str, dict[str, Any], str], tuple[Any, dict[str, Any] | None]]
Reply = tuple[list[bytes], list[dict[str, Any]]]  # frames with envelope, the writes' events
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
        self.ops = OpStats(READ_OPS | WRITE_FIELDS.keys() | {RESPOND, ATTACH})
        self.sessions = False  # serves session.respond (set once its shard's engine runs)
        # and session.attach: agents whose session pushes leave from here (attach.py)
        self.attachments = Attachments()
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
        """(reply frames with envelope, the writes' events) for one message; in cluster
        mode a write's comes later (an awaitable of the same pair). Nothing from outside
        raises out of here."""
        t0 = time.perf_counter()
        self.stats["requests"] += 1
        envelope = frames[:1]
        rid: int | str | None = None
        op, agent = "", None
        body: dict[str, Any] = {}
        try:
            rid, op, body = wire.parse_request(frames[1:], self.max_message)
            if op == "var.batch":
                return self._batch(frames, rid, batch.parse(body), handle, t0)
            agent = body.get("agent")
            result, event = self._one(frames, op, body, handle, None)
            if type(result) is Pending:
                return self._later(result, _Call(envelope, rid, op, agent, body, t0))
            self._served.append((op, OK, t0))
            return envelope + wire.reply_ok(rid, result), [event] if event else []
        except Exception as exc:
            return self._failed(exc, _Call(envelope, rid, op, agent, body, t0)), []

    def _one(self, frames: list[bytes], op: str, body: dict[str, Any], handle: Serve,
             nbytes: int | None) -> tuple[Any, dict[str, Any] | None]:
        """Admit and serve one op, alone or of a batch: handle()'s pair, or WireError.
        `nbytes`: what the op costs a byte-counting limit (None: the message's size)."""
        if op in READ_OPS:
            if self.limits is not None:
                self._limit(frames, None, nbytes)
            check_read(op, body)
            return handle(op, body, ADMIN)
        if op in WRITE_FIELDS or (op == RESPOND and self.sessions):
            try:
                agent, args = self.admission.admit(op, body)
                if op == RESPOND and (isinstance(args["round"], bool)
                                      or not isinstance(args["round"], int)):
                    raise WireError(ErrorCode.BAD_REQUEST, "round must be an integer: the "
                                    "round number of the invitation being answered")
            except WireError:
                if self.limits is not None:  # a refused write costs its connection too
                    self._limit(frames, None, nbytes)
                raise
            if self.limits is not None:
                self._limit(frames, agent, nbytes)
            return handle(op, args, agent)
        if op == ATTACH and self.sessions and nbytes is None:
            return self._attach(frames, body), None
        if self.limits is not None:
            self._limit(frames, None, nbytes)
        raise WireError(ErrorCode.UNKNOWN_OP, f"op {op!r} is not served on shard "
                        "endpoints; send it to the agent endpoint")

    def _attach(self, frames: list[bytes], body: dict[str, Any]) -> dict[str, Any]:
        """session.attach: this connection takes the pushes of this shard's sessions for
        the agent its credential proves (worker/attach.py). Changes no state anyone else
        sees, so the authorize hook is not asked; rate-limited as a write."""
        try:
            check_fields(body, ATTACH, ATTACH_FIELDS, ATTACH_FIELDS)
            agent, credential = body["agent"], body["credential"]
            if not isinstance(agent, str):
                raise WireError(ErrorCode.BAD_REQUEST, "agent must be an agent id")
            self._credited(None, agent, body)
        except WireError:
            if self.limits is not None:
                self._limit(frames, None)
            raise
        if self.limits is not None:
            self._limit(frames, agent)
        self.attachments.attach(agent, frames[0], credential_epoch(credential))
        return {"attached": True, "agent": agent}

    def _batch(self, frames: list[bytes], rid: int | str, ops: list[Any], handle: Serve,
               t0: float) -> Served:
        """A var.batch: each op admitted, limited (the message's bytes charged to its first
        op) and served as if alone, in order; an op's failure is its element's answer."""
        elements: list[bytes | None] = []
        events: list[dict[str, Any]] = []
        later: list[tuple[int, Pending, _Call]] = []
        nbytes: int | None = None
        held: set[str] = set()  # names with an op not served here: the rest waits too
        for op_body in ops:
            op, agent, name = "", None, None
            body: dict[str, Any] = {}
            try:
                try:
                    op, body = batch.split(op_body)
                except WireError:
                    if self.limits is not None:  # a request, as an unknown op alone is
                        self._limit(frames, None, nbytes)
                    raise
                agent, name = body.get("agent"), body.get("name")
                if isinstance(name, str) and name in held:
                    if self.limits is not None:  # still a request of this connection
                        self._limit(frames, None, nbytes)
                    raise batch.held_back(name)
                result, event = self._one(frames, op, body, handle, nbytes)
            except Exception as exc:
                if isinstance(exc, WireError) and exc.code in batch.SKIP_AFTER and \
                        isinstance(name, str):
                    held.add(name)
                elements.append(self._element_failed(exc, _Call([], rid, op, agent, body, t0)))
                continue
            finally:
                nbytes = 0
            if type(result) is Pending:
                later.append((len(elements), result, _Call([], rid, op, agent, body, t0)))
                elements.append(None)
                continue
            self._served.append((op, OK, t0))
            elements.append(batch.ok(result))
            if event:
                events.append(event)
        if later:
            return self._batch_later(frames[:1], rid, elements, events, later)
        return frames[:1] + wire.reply_ok(rid, batch.join(elements)), events  # type: ignore[arg-type]

    async def _batch_later(self, envelope: list[bytes], rid: int | str,
                           elements: list[bytes | None], events: list[dict[str, Any]],
                           later: list[tuple[int, Pending, _Call]]) -> Reply:
        """A batch with cluster writes: its reply once etcd has answered every one (they
        were all sent before the first is awaited)."""
        for i, pending, call in later:
            try:
                result, event = await pending.result
            except Exception as exc:
                elements[i] = self._element_failed(exc, call)
                continue
            self._served.append((call.op, OK, call.t0))
            elements[i] = batch.ok(result)
            if event:
                events.append(event)
        return envelope + wire.reply_ok(rid, batch.join(elements)), events  # type: ignore[arg-type]

    async def _later(self, pending: Pending, call: _Call) -> Reply:
        try:
            result, event = await pending.result
        except Exception as exc:
            return self._failed(exc, call), []
        self._served.append((call.op, OK, call.t0))
        assert call.rid is not None  # parsed: a request without one was refused at once
        return call.envelope + wire.reply_ok(call.rid, result), [event] if event else []

    def _failed(self, error: Exception, call: _Call) -> list[bytes]:
        error = self._counted(error, call)
        if isinstance(error, WireError):
            return call.envelope + wire.refusal(call.rid, error)
        return call.envelope + wire.reply_incident(
            call.rid, log, f"shard endpoint: request {call.rid!r} failed", error)

    def _element_failed(self, error: Exception, call: _Call) -> bytes:
        error = self._counted(error, call)
        if not isinstance(error, WireError):
            error = wire.incident(log, f"shard endpoint: an op of batch {call.rid!r} "
                                  "failed", error)
        return batch.error(error)

    def _counted(self, error: Exception, call: _Call) -> Exception:
        """Count a failed request (or op of a batch) and note a forbidden write for the
        audit log."""
        self.stats["errors"] += 1
        if isinstance(error, WireError):
            if call.op:
                self._served.append((call.op, error.code, call.t0))
            if error.code == ErrorCode.FORBIDDEN:
                self.refused.append({"op": call.op, "agent": call.agent,
                                     "name": call.body.get("name"), "reason": error.message,
                                     "via": "shard_endpoint"})
            if error.code == ErrorCode.RATE_LIMITED:
                self.stats["rate_limited"] += 1
        elif call.op:
            self._served.append((call.op, ErrorCode.INTERNAL, call.t0))
        return error

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

    def _limit(self, frames: list[bytes], agent: str | None, nbytes: int | None = None,
               ) -> None:
        """Charge the request to its connection (the routing id) and its proven agent, or
        raise rate_limited; called after the checks that need no state and before the
        shard sees the request, so a refusal changes nothing. `nbytes` None: the size of
        the message."""
        limits = self.limits
        assert limits is not None
        if nbytes is None:
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

