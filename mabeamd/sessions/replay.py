"""Verify a session's audit record offline: does its outcome follow from its inputs?

Two checks, both without a daemon (`mabeamctl audit verify`):

1. The driver replayed: the protocol's own `run()` against a `ReplaySession` that answers
   each round with the answers the record says came back (every streamed order, every
   operator decision). Drivers are deterministic given their answers, so the result and
   the writes must come out exactly as recorded. This covers every protocol, multi-round
   ones (English, Dutch, contract net with confirmation) and markets included.
2. The pure mechanism: `decide(inputs)` on the recorded inputs map (what `protocols eval`
   takes), whose result must agree with the recorded one on every key both have (a driver
   may add keys of its own, e.g. contract net's `cfp_round`), and the inputs must be the
   ones the transcript implies (`Protocol.audit_inputs`).

And the bookkeeping: an applied session's recorded new versions name exactly its writes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

from mabeamd.protocol import Outcome, Participant, Protocol, ProtocolError, Response


class Mismatch(Exception):
    """The record does not hold up; str() says where."""


def same(a: Any, b: Any) -> bool:
    """Equal as JSON (the record went through JSON; the replay did not)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class ReplaySession:
    """`mabeamd.protocol.Session` answering from a transcript instead of from agents."""

    def __init__(self, rec: dict[str, Any]) -> None:
        self.id = str(rec.get("session"))
        self.protocol = str(rec.get("protocol"))
        self.initiator = str(rec.get("initiator"))
        self.participants = [Participant.from_dict(p) for p in rec.get("participants") or []]
        self.params: dict[str, Any] = dict(rec.get("params") or {})
        # Drivers only iterate the names (writes go to every session variable).
        self.variables: dict[str, dict[str, Any]] = {n: {} for n in rec.get("variables") or []}
        self._rounds = list(rec.get("transcript") or [])
        self._next = 0

    def remaining(self) -> float:
        return 3600.0  # only announced in round bodies; never part of an outcome

    def _take(self, kind: str, agents: Iterable[str]) -> dict[str, Any]:
        if self._next >= len(self._rounds):
            raise Mismatch(f"the driver opened round {self._next + 1} ({kind}), the record "
                           f"has {len(self._rounds)}")
        rnd: dict[str, Any] = self._rounds[self._next]
        self._next += 1
        asked = list(dict.fromkeys(agents))
        if rnd.get("kind") != kind or (kind != "escalation" and rnd.get("asked") != asked):
            raise Mismatch(f"round {self._next}: the driver asked {asked} for {kind!r}, the "
                           f"record says {rnd.get('asked')} for {rnd.get('kind')!r}")
        return rnd

    async def ask(self, agents: Iterable[str], kind: str, body: Any,
                  timeout: float | None = None) -> dict[str, Response]:
        rnd = self._take(kind, agents)
        out: dict[str, Response] = {}
        for i, raw in enumerate(rnd.get("answers") or []):
            r = Response.from_dict(raw, i)
            out.pop(r.agent, None)
            out[r.agent] = r
        return out

    async def stream(self, agents: Iterable[str], kind: str, body: Any,
                     handle: Any, duration: float) -> int:
        rnd = self._take(kind, agents)
        n = 0
        for i, raw in enumerate(rnd.get("answers") or []):
            try:
                handle(Response.from_dict(raw, i))
            except ProtocolError as exc:
                raise Mismatch(f"streamed answer {i + 1} was taken live but is refused on "
                               f"replay: {exc}") from None
            n += 1
        return n

    def tell(self, agents: Iterable[str], kind: str, body: Any) -> None:
        pass

    async def escalate(self, body: Any, check: Any) -> Any:
        rnd = self._take("escalation", ())
        decision = rnd.get("decision")
        check(decision)
        return decision

    def event(self, name: str, body: dict[str, Any]) -> None:
        pass

    def finished(self) -> None:
        if self._next != len(self._rounds):
            raise Mismatch(f"the driver ended after {self._next} round(s), the record has "
                           f"{len(self._rounds)}")


def verify_session(proto: Protocol, rec: dict[str, Any]) -> list[str]:
    """What holds for one session record (lines for the operator); raises Mismatch."""
    state = rec.get("state")
    writes, versions = rec.get("writes") or {}, rec.get("versions") or {}
    if state != "applied":
        if writes or versions:
            raise Mismatch(f"the session ended {state} but the record shows writes")
        return [f"ended {state}: nothing was applied, nothing to re-run"]
    if sorted(versions) != sorted(writes):
        raise Mismatch(f"new versions are recorded for {sorted(versions)}, the writes are "
                       f"{sorted(writes)}")
    replay = ReplaySession(rec)
    try:
        outcome: Outcome = asyncio.run(proto.run(replay))
    except ProtocolError as exc:
        raise Mismatch(f"the driver refuses the recorded answers: {exc}") from None
    replay.finished()
    proto.check_outcome(replay, outcome)
    if not same(outcome.result, rec.get("result")):
        raise Mismatch(f"replayed result differs from the recorded one:\n  replayed "
                       f"{json.dumps(outcome.result, sort_keys=True)}\n  recorded "
                       f"{json.dumps(rec.get('result'), sort_keys=True)}")
    if not same(outcome.writes, writes):
        raise Mismatch(f"replayed writes {json.dumps(outcome.writes, sort_keys=True)} differ "
                       f"from the recorded {json.dumps(writes, sort_keys=True)}")
    notes = [f"driver replayed on {len(replay._rounds)} recorded round(s): result and "
             f"{len(writes)} write(s) match"]
    inputs = rec.get("inputs")
    if inputs is None:
        return [*notes, "no decide() inputs recorded (the driver replay is the check)"]
    implied = proto.audit_inputs(replay.params, replay.participants, replay._rounds)
    if not same(implied, inputs):
        raise Mismatch("the recorded inputs are not the ones its transcript implies")
    try:
        decided = proto.decide(inputs)
    except ProtocolError as exc:
        raise Mismatch(f"decide(inputs) refuses the recorded inputs: {exc}") from None
    result = rec.get("result") or {}
    common = sorted(set(decided) & set(result))
    for key in common:
        if not same(decided[key], result[key]):
            raise Mismatch(f"decide(inputs) gives {key} = {json.dumps(decided[key])}, the "
                           f"record says {json.dumps(result[key])}")
    return [*notes, f"decide(inputs) agrees on {len(common)} result key(s)"]
