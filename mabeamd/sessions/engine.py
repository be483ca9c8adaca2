"""The session engine: runs coordination sessions inside the worker that owns their variables.

Life of a session (states as `sessions show` prints them):

    queued      waiting for a variable another session holds (on_conflict = "queue")
    collecting  a round is open: participants were invited and may answer
    deciding    the driver is deciding / the outcome is being validated and applied
    escalated   waiting for an operator's `mabeamctl sessions decide`
    applied | failed | cancelled | timed_out      the end

Every variable a session may change is locked for its whole life: other writers get
`conflict`, and a second session wanting one is refused with `conflict` (on_conflict
"refuse", the default) or waits its turn within its own deadline ("queue"). The outcome's
writes are validated (only the session's variables; the protocol's own checks; the
`mabeamd_session_outcome` hook; each variable's constraints) and then go to the WAL as one
record, so they are applied all together or not at all, crash or no crash.

Participants that leave or turn unhealthy mid-session (the arbiter tells us) are absent: a
round stops waiting for them and protocols count them as abstaining / not bidding.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, WireError
from mabeamd.plugins import PluginHost
from mabeamd.protocol import Outcome, Participant, Protocol, ProtocolError, Response
from mabeamd.sessions.terms import deadline_of, protocol_named
from mabeamd.worker.shard import Shard

if TYPE_CHECKING:
    from mabeamd.cluster.shard import ClusterShard

log = logging.getLogger(__name__)

# A driver still running this long after the deadline is cut off (rounds already end at the
# deadline; this bounds drivers that misbehave).
OVERRUN = 0.5

Out = Callable[[str, dict[str, Any]], None]


class LiveSession:
    """One running session; also the `mabeamd.protocol.Session` its driver talks to."""

    def __init__(self, engine: SessionEngine, spec: dict[str, Any], proto: Protocol,
                 params: dict[str, Any], deadline: float) -> None:
        self._engine = engine
        self.id: str = spec["session"]
        self.protocol = proto.name
        self.proto = proto
        self.initiator: str = spec["initiator"]
        self.participants = [Participant.from_dict(p) for p in spec["participants"]]
        self.params = params
        self.variables: dict[str, dict[str, Any]] = {}
        self.names: list[str] = list(spec["variables"])
        self.on_conflict: str = spec.get("on_conflict", "refuse")
        self.created_at = time.time()
        self.t0 = time.monotonic()
        self.deadline = self.t0 + deadline
        self.state = "created"
        self.round = 0
        self.kind: str | None = None
        self.waiting: set[str] = set()
        self.answers: dict[str, Response] = {}
        self.absent: set[str] = set()
        self._ids = {p.id for p in self.participants}
        self._round_done = asyncio.Event()
        self._decision: tuple[asyncio.Future[Any], Callable[[Any], Any]] | None = None
        # A streaming round (markets): every answer goes to this handler at once.
        self._handler: Callable[[Response], Any] | None = None
        self.handled = 0
        self.cancel_reason = ""
        self.result: dict[str, Any] | None = None
        self.writes: dict[str, Any] = {}
        self.reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        # Every round as the driver saw it, for the audit log: what the mechanism was given
        # (mabeamctl audit verify replays the driver on it: sessions/replay.py).
        self.transcript: list[dict[str, Any]] = []
        self.versions: dict[str, int] = {}  # the applied writes' new versions
        self._streamed_log: list[dict[str, Any]] = []

    # --- the driver's API (mabeamd.protocol.Session) ---------------------------------------

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def _open_round(self, agents: Iterable[str], kind: str, body: Any, limit: float,
                    **extra: Any) -> None:
        """Start round `kind` for `agents` and push its invitations (a round nobody still
        present was asked to answer pushes nothing)."""
        targets = list(dict.fromkeys(agents))
        strangers = [a for a in targets if a not in self._ids]
        if strangers:
            raise ProtocolError(f"driver asked non-participants {strangers!r}")
        self.round += 1
        self.kind = kind
        self.answers = {}
        self.waiting = {a for a in targets if a not in self.absent}
        self.state = "collecting"
        if self.waiting:
            self._engine.out("push", {"agents": sorted(self.waiting), "op": "session.invite",
                                      "body": {"session": self.id, "protocol": self.protocol,
                                               "round": self.round, "kind": kind,
                                               "body": body, "deadline_in": round(limit, 3),
                                               **extra}})

    def _close_round(self) -> dict[str, Response]:
        answers, self.answers = self.answers, {}
        self.kind, self.waiting = None, set()
        self.state = "deciding"
        return answers

    async def ask(self, agents: Iterable[str], kind: str, body: Any,
                  timeout: float | None = None) -> dict[str, Response]:
        limit = self.remaining() if timeout is None else min(timeout, self.remaining())
        self._round_done = asyncio.Event()
        targets = list(dict.fromkeys(agents))
        opened = round(time.monotonic() - self.t0, 6)  # for display (the console's diagram)
        self._open_round(targets, kind, body, limit)
        if self.waiting:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._round_done.wait(), limit)
        answers = self._close_round()
        self.transcript.append({"kind": kind, "asked": targets, "at": opened,
                                "answers": [r.to_dict() for r in answers.values()]})
        return answers

    async def stream(self, agents: Iterable[str], kind: str, body: Any,
                     handle: Callable[[Response], Any], duration: float) -> int:
        limit = max(0.0, min(duration, self.remaining()))
        targets = list(dict.fromkeys(agents))
        opened = round(time.monotonic() - self.t0, 6)
        self._open_round(targets, kind, body, limit, streaming=True)
        self._streamed_log = []
        self.transcript.append({"kind": kind, "asked": targets, "stream": True, "at": opened,
                                "answers": self._streamed_log})
        self._handler = handle
        self.handled = 0
        try:
            if self.waiting:
                await asyncio.sleep(limit)
        finally:
            self._handler = None
            self._close_round()
        return self.handled

    def tell(self, agents: Iterable[str], kind: str, body: Any) -> None:
        targets = [a for a in dict.fromkeys(agents) if a in self._ids and a not in self.absent]
        if targets:
            self._engine.out("push", {"agents": targets, "op": "session.notice",
                                      "body": {"session": self.id, "protocol": self.protocol,
                                               "kind": kind, "body": body}})

    async def escalate(self, body: Any, check: Callable[[Any], Any]) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._decision = (fut, check)
        self.state = "escalated"
        self.event("escalated", {"request": body})
        try:
            decision = await fut
            self.transcript.append({"kind": "escalation", "decision": decision})
            return decision
        finally:
            self._decision = None
            self.state = "deciding"

    def event(self, name: str, body: dict[str, Any]) -> None:
        self._engine.out("event", {"topic": f"session.{name}",
                                   "body": {"session": self.id, "protocol": self.protocol,
                                            **body}})

    # --- from outside ----------------------------------------------------------------------

    def respond(self, agent: str, round_no: Any, value: Any) -> dict[str, Any]:
        if agent not in self._ids:
            raise WireError(ErrorCode.FORBIDDEN, f"{agent!r} is not a participant of "
                            f"session {self.id}")
        if self.kind is None or round_no != self.round:
            raise WireError(ErrorCode.CONFLICT, f"round {round_no} of session {self.id} is "
                            f"not open (current round {self.round}, "
                            f"{'open' if self.kind else 'closed'})")
        if agent not in self.waiting and agent not in self.answers:
            raise WireError(ErrorCode.CONFLICT, f"{agent!r} was not asked in round "
                            f"{self.round}")
        try:
            self.proto.check_response(self.kind, value, self.params)
        except ProtocolError as exc:
            raise WireError(ErrorCode.BAD_REQUEST, str(exc)) from None
        if self._handler is not None:
            return self._streamed(agent, value)
        if agent in self.answers and not self.proto.resubmit(self.kind, self.params):
            raise WireError(ErrorCode.CONFLICT, f"{agent!r} already answered round "
                            f"{self.round}; {self.protocol} takes one answer per agent")
        # A second answer in the same round replaces the first and takes its place in time:
        # re-inserted, so the round's answers stay in arrival order (what ask() promises).
        self.answers.pop(agent, None)
        self.answers[agent] = self._arrived(agent, value)
        self.waiting.discard(agent)
        if not self.waiting:
            self._round_done.set()
        return {"session": self.id, "round": self.round, "recorded": True}

    def _arrived(self, agent: str, value: Any) -> Response:
        """An answer stamped with its place in the worker's arrival order."""
        return Response(agent, value, next(self._engine.arrivals),
                        round(time.monotonic() - self.t0, 6))

    def _streamed(self, agent: str, value: Any) -> dict[str, Any]:
        assert self._handler is not None
        r = self._arrived(agent, value)
        try:
            reply = self._handler(r)
        except ProtocolError as exc:
            raise WireError(ErrorCode.BAD_REQUEST, str(exc)) from None
        self.handled += 1
        self._streamed_log.append(r.to_dict())  # only what the handler took
        return {"session": self.id, "round": self.round, "recorded": True, "reply": reply}

    def gone(self, agent: str) -> None:
        if agent in self._ids:
            self.absent.add(agent)
            self.waiting.discard(agent)
            if self.kind is not None and not self.waiting:
                self._round_done.set()

    def decide(self, decision: Any) -> dict[str, Any]:
        if self._decision is None:
            raise WireError(ErrorCode.CONFLICT, f"session {self.id} is not waiting for an "
                            f"operator decision (state {self.state})")
        fut, check = self._decision
        try:
            check(decision)
        except ProtocolError as exc:
            raise WireError(ErrorCode.BAD_REQUEST, str(exc)) from None
        fut.set_result(decision)
        return {"session": self.id, "accepted": True}

    def record(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "session": self.id, "protocol": self.protocol, "initiator": self.initiator,
            "state": self.state, "participants": [p.id for p in self.participants],
            "variables": self.names, "params": self.params, "round": self.round,
            "open_round": self.kind, "waiting": sorted(self.waiting),
            "answered": len(self.answers) + self.handled, "absent": sorted(self.absent),
            "created_at": self.created_at,
            "deadline_at": self.created_at + (self.deadline - self.t0),
            "elapsed": round(now - self.t0, 6), "result": self.result, "writes": self.writes,
            "reason": self.reason,
        }


class SessionEngine:
    def __init__(self, shard: Shard | ClusterShard, plugins: PluginHost, out: Out) -> None:
        """`shard`: this worker's; a ClusterShard (cluster mode) also locks the session's
        variables in etcd and applies the outcome as one etcd transaction."""
        self.shard = shard
        self.plugins = plugins
        self.protocols = plugins.protocols()
        self.out = out
        self.live: dict[str, LiveSession] = {}
        self.arrivals = itertools.count(1)  # answer order across the worker: the tie-breaker
        self._released = asyncio.Event()

    # --- requests from the arbiter ---------------------------------------------------------

    def handle(self, op: str, body: dict[str, Any]) -> Any:
        if op == "session.start":
            return self.start(body)
        if op == "session.list":
            return [s.record() for s in self.live.values()]
        s = self.live.get(str(body.get("session")))
        if s is None:
            raise WireError(ErrorCode.NOT_FOUND, f"no running session {body.get('session')!r}"
                            " on this shard")
        if op == "session.get":
            return s.record()
        if op == "session.respond":
            return s.respond(str(body.get("agent")), body.get("round"), body.get("response"))
        if op == "session.cancel":
            s.cancel_reason = str(body.get("reason") or f"cancelled by {body.get('by')}")
            if s.task is not None:
                s.task.cancel()
            return {"session": s.id, "cancelling": True}
        if op == "session.decide":
            return s.decide(body.get("decision"))
        raise WireError(ErrorCode.UNKNOWN_OP, f"shard: unknown op {op!r}")

    def start(self, spec: dict[str, Any]) -> dict[str, Any]:
        proto = protocol_named(self.protocols, spec.get("protocol"))
        try:
            params = proto.check_params(dict(spec.get("params") or {}))
        except ProtocolError as exc:
            raise WireError(ErrorCode.BAD_REQUEST, f"{proto.name}: {exc}") from None
        reason = self.plugins.refusal("mabeamd_session_params", protocol=proto.name,
                                      params=params, initiator=spec["initiator"])
        if reason is not None:
            raise WireError(ErrorCode.BAD_REQUEST, f"{proto.name}: {reason}")
        s = LiveSession(self, spec, proto, params,
                        deadline_of(proto, spec.get("deadline"), float(spec["max_deadline"])))
        for name in s.names:
            self.shard.store.get(name)  # not_found now rather than at apply time
        cap = getattr(self.shard, "max_session_variables", None)
        if cap is not None and len(s.names) > cap:
            raise WireError(ErrorCode.BAD_REQUEST, f"a session in cluster mode may lock at "
                            f"most {cap} variables (one etcd transaction applies the outcome; "
                            f"etcd's --max-txn-ops), not {len(s.names)}")
        busy = self._holders(s)
        if busy and s.on_conflict == "refuse":
            raise WireError(ErrorCode.CONFLICT, "variables locked by other sessions: " +
                            ", ".join(f"{n} ({h})" for n, h in busy))
        if busy:
            s.state = "queued"
        else:
            self._lock(s)
        self.live[s.id] = s
        s.task = asyncio.get_running_loop().create_task(self._run(s))
        return {"session": s.id, "state": s.state, "shard": self.shard.index}

    def agents_down(self, agents: list[str]) -> None:
        for s in self.live.values():
            for a in agents:
                s.gone(a)

    async def stop(self) -> None:
        """Worker shutdown: end every session as failed (nothing is applied)."""
        for s in list(self.live.values()):
            s.cancel_reason = "shutting_down"
            if s.task is not None:
                s.task.cancel()
        tasks = [s.task for s in self.live.values() if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    # --- locks -----------------------------------------------------------------------------

    def _holders(self, s: LiveSession) -> list[tuple[str, str]]:
        locked = self.shard.locked
        return [(n, locked[n]) for n in s.names if n in locked and locked[n] != s.id]

    def _lock(self, s: LiveSession) -> None:
        for n in s.names:
            self.shard.locked[n] = s.id

    def _unlock(self, s: LiveSession) -> None:
        for n in s.names:
            if self.shard.locked.get(n) == s.id:
                del self.shard.locked[n]
        self._released.set()
        self._released = asyncio.Event()

    async def _acquire(self, s: LiveSession) -> None:
        while self._holders(s):
            await asyncio.wait_for(self._released.wait(), s.remaining())
        self._lock(s)

    # --- running ---------------------------------------------------------------------------

    async def _run(self, s: LiveSession) -> None:
        try:
            if s.state == "queued":
                await self._acquire(s)
            if not isinstance(self.shard, Shard):  # cluster mode: the locks in etcd too
                await self.shard.lock_session(
                    s.id, sorted(s.names), wait=s.on_conflict != "refuse",
                    deadline=time.monotonic() + s.remaining())
            s.variables = {n: self.shard.store.get(n).public() for n in s.names}
            s.state = "collecting"
            self.plugins.call("mabeamd_session_started", session=s.record())
            s.event("started", {"initiator": s.initiator,
                                "participants": [p.id for p in s.participants]})
            outcome = await asyncio.wait_for(s.proto.run(s), s.remaining() + OVERRUN)
            s.state = "deciding"
            s.result, s.writes = outcome.result, outcome.writes
            self._validate(s, outcome)
            if isinstance(self.shard, Shard):
                events = self.shard.apply_session(s.id, outcome.writes, time.time())
            else:
                events = await self.shard.apply_session(s.id, outcome.writes, time.time())
            for event in events:
                s.versions[event["name"]] = event["version"]
                self.out("event", {"topic": f"var.{event['name']}", "body": event})
            s.state = "applied"
        except asyncio.TimeoutError:
            s.state, s.reason = "timed_out", "deadline reached before a decision"
        except asyncio.CancelledError:
            if s.cancel_reason == "shutting_down":
                s.state, s.reason = "failed", "shutting_down"
            else:
                s.state, s.reason = "cancelled", s.cancel_reason or "cancelled"
        except (ProtocolError, WireError) as exc:
            s.state, s.reason = "failed", str(exc)
        except Exception as exc:
            err = wire.incident(log, f"session {s.id} ({s.protocol}) failed", exc)
            s.state, s.reason = "failed", err.message
        finally:
            self._finish(s)

    def _validate(self, s: LiveSession, outcome: Outcome) -> None:
        stray = sorted(set(outcome.writes) - set(s.names))
        if stray:
            raise ProtocolError(f"outcome writes variables outside the session: {stray}")
        s.proto.check_outcome(s, outcome)
        reason = self.plugins.refusal("mabeamd_session_outcome", session=s.record(),
                                      outcome={"result": outcome.result,
                                               "writes": outcome.writes})
        if reason is not None:
            raise ProtocolError(f"outcome refused: {reason}")

    def _finish(self, s: LiveSession) -> None:
        if s.state not in ("applied",):
            s.writes = {}  # nothing was applied
        s.kind, s.waiting = None, set()
        self.live.pop(s.id, None)
        self._unlock(s)
        if not isinstance(self.shard, Shard):
            self.shard.unlock_session(s.id)  # if the outcome did not take the locks with it
        record = s.record()
        self.out("ended", {**record, "audit": self._audit(s)})
        s.event(s.state, {"reason": s.reason, "result": s.result})
        self.plugins.call("mabeamd_session_ended", session=record)

    @staticmethod
    def _audit(s: LiveSession) -> dict[str, Any]:
        """What the audit log keeps of a session beyond its record: everything its mechanism
        was given (participants in full, every round's answers in arrival order, the
        decide(inputs) map where the protocol can say it) and the writes' new versions."""
        try:
            inputs = s.proto.audit_inputs(s.params, s.participants, s.transcript)
        except Exception as exc:  # a plugin's bug must not lose the session's end
            log.warning("session %s: %s.audit_inputs failed: %r", s.id, s.protocol, exc)
            inputs = None
        return {"participants": [p.to_dict() for p in s.participants],
                "transcript": s.transcript, "inputs": inputs, "versions": s.versions}
