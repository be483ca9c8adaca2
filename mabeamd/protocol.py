"""The protocol API: what a coordination-protocol plugin provides, and what its driver may ask
of the session engine. Plugins return `Protocol` instances from the `mabeamd_protocols` hook.

A protocol is two parts (see docs/plugins.md and docs/protocols.md):

    decide(inputs) -> outcome   the pure mechanism: a JSON-like map in, a JSON-like map out,
                                deterministic, no I/O. `mabeamctl protocols eval` runs it
                                offline; property tests hammer it.
    run(session) -> Outcome     the session driver: invites participants (`session.ask`),
                                collects their answers and calls decide(). The engine runs it
                                in the worker that owns the session's variables, enforces the
                                deadline, validates the outcome and applies its writes
                                atomically.

Most protocols are one round: ask every participant once, decide on what came back.
`OneRound` is that driver; a protocol subclassing it writes only `decide`, `check_response`
and `writes`. It may also write `decide_typed`, the same mechanism on what a session already
holds (params checked at start, answers checked at arrival): the driver then calls that, and
decide(inputs) becomes its JSON adapter -- parse and check the inputs, call decide_typed --
so a session never turns its answers into maps only to parse them again.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any
from typing import Protocol as TypingProtocol


class ProtocolError(Exception):
    """Bad params, inputs, responses or operator decisions; the message is for the user."""


@dataclass(frozen=True)
class Participant:
    id: str
    weight: float = 1.0
    priority: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "weight": self.weight, "priority": self.priority,
                "metadata": dict(self.metadata)}

    @staticmethod
    def from_dict(d: Any) -> Participant:
        if type(d) is dict:  # the common shape, checked with exact types: one pass, no calls
            pid, w, pr = d.get("id"), d.get("weight", 1.0), d.get("priority", 0)
            if type(pid) is str and type(pr) is int and (
                    (type(w) is float and 0.0 <= w < math.inf) or (type(w) is int and w >= 0)):
                meta = d.get("metadata")
                return Participant(pid, w, pr, dict(meta) if meta else {})
        if not isinstance(d, Mapping) or not isinstance(d.get("id"), str):
            raise ProtocolError("each participant is a map with a string id")
        return Participant(d["id"], number(d, "weight", 1.0, lo=0.0),
                           integer(d, "priority", 0), dict(d.get("metadata") or {}))


@dataclass(frozen=True)
class Response:
    """One participant's answer in one round. `seq` is the arrival order within the session
    (the engine's clock of record for every "earliest wins" tie-break); `at` is seconds since
    the session started, for display."""

    agent: str
    value: Any
    seq: int
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "value": self.value, "seq": self.seq, "at": self.at}

    @staticmethod
    def from_dict(d: Any, default_seq: int) -> Response:
        if type(d) is dict:  # as Participant.from_dict: the common shape first
            agent, seq, at = d.get("agent"), d.get("seq", default_seq), d.get("at", 0.0)
            if type(agent) is str and type(seq) is int and (
                    (type(at) is float and math.isfinite(at)) or type(at) is int):
                return Response(agent, d.get("value"), seq, at)
        if not isinstance(d, Mapping) or not isinstance(d.get("agent"), str):
            raise ProtocolError("each response is a map with a string agent")
        return Response(d["agent"], d.get("value"), integer(d, "seq", default_seq),
                        number(d, "at", 0.0))


@dataclass
class Outcome:
    """What a driver returns: `result` goes to the initiator and the event stream; `writes`
    (variable name -> new value) are applied atomically, all or nothing, after validation."""

    result: dict[str, Any]
    writes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trade:
    """What an applied outcome moved, for the revenue and clearing-price metrics: the
    payments it makes in total, and the price(s) at which it cleared (one per item or good;
    none when there is no single price, e.g. VCG payments)."""

    revenue: float
    prices: tuple[float, ...] = ()


class Session(TypingProtocol):
    """The engine's side of a running session, as a driver sees it."""

    id: str
    protocol: str
    initiator: str
    participants: list[Participant]
    params: dict[str, Any]
    variables: dict[str, dict[str, Any]]  # name -> state when the session started

    def remaining(self) -> float:
        """Seconds left before the session's deadline."""

    async def ask(self, agents: Iterable[str], kind: str, body: Any,
                  timeout: float | None = None) -> dict[str, Response]:
        """Invite `agents` to a new round; return the answers that came back before every
        asked agent answered or went away, or `timeout` (default: the session deadline).
        One answer per agent (the latest, or the first when `resubmit` says so), each one
        passed `check_response`, in arrival order (ascending seq)."""

    async def stream(self, agents: Iterable[str], kind: str, body: Any,
                     handle: Any, duration: float) -> int:
        """Open a streaming round for `duration` seconds (at most until the deadline): each
        answer goes to `handle(response)` the moment it arrives, its return value is the
        reply the answering agent gets, and agents may answer any number of times (markets).
        A ProtocolError from `handle` refuses that answer. Returns how many were handled."""

    def tell(self, agents: Iterable[str], kind: str, body: Any) -> None:
        """Push a notice (no answer expected), e.g. contract-net rejections."""

    async def escalate(self, body: Any, check: Any) -> Any:
        """Publish `session.escalated` and wait for an operator's `sessions decide`; `check`
        validates a decision (raise ProtocolError to refuse it and keep waiting)."""

    def event(self, name: str, body: dict[str, Any]) -> None:
        """Publish `session.<name>` on the event stream."""


class Protocol:
    """Base class for protocols. Subclasses set `name` and `summary` and implement the rest."""

    name: str = ""
    summary: str = ""
    #: The session deadline when session.start gives none, in seconds.
    default_deadline: float = 10.0

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate params and fill in defaults; raise ProtocolError. Pure."""
        return dict(params)

    def decide_params(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The first step of a one-round decide(): the inputs hold params, participants and
        responses and nothing else; returns the params checked as at session start."""
        only(inputs, {"params", "participants", "responses"}, "inputs")
        return self.check_params(dict(inputs.get("params") or {}))

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        """Validate one participant's answer to a round of `kind`; a ProtocolError is sent
        back to the participant (who may answer again) and the answer is not recorded."""

    def resubmit(self, kind: str, params: dict[str, Any]) -> bool:
        """Whether a second answer in the same round replaces the first (True) or is
        refused with `conflict` (False), e.g. sealed bids with resubmission turned off."""
        return True

    def parse_input(self, text: str) -> Any:
        """Parse a `protocols eval` input file: JSON, unless a protocol also reads another
        format (the combinatorial auction reads CATS files). Raise ProtocolError."""
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"not JSON: {exc}") from None

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The pure mechanism; `inputs` are described per protocol in docs/protocols.md."""
        raise NotImplementedError

    async def run(self, session: Session) -> Outcome:
        raise NotImplementedError

    def check_outcome(self, session: Session, outcome: Outcome) -> None:
        """Protocol-specific checks before the outcome is applied; raise ProtocolError."""

    def trade(self, result: dict[str, Any]) -> Trade | None:
        """What an applied session's `result` traded (the metrics' revenue and clearing
        prices), None when nothing was sold or the protocol trades nothing (votes). Pure;
        the arbiter calls it once per applied session, and an exception here is logged,
        never fatal."""
        return None

    def audit_inputs(self, params: dict[str, Any], participants: list[Participant],
                     transcript: list[dict[str, Any]]) -> dict[str, Any] | None:
        """decide()'s inputs map for a finished session, from its transcript (each round:
        {"kind", "asked", "answers": [Response maps in arrival order]}, a streamed round
        with "stream": true, an operator's decision as {"kind": "escalation",
        "decision"}), for the audit log; None when decide() cannot express the session.
        The default: a session of one round is decide(params, participants, its answers).
        `mabeamctl audit verify` checks decide(inputs) against the recorded result on the
        keys both have, and replays run() on the transcript for the rest."""
        if len(transcript) == 1 and not transcript[0].get("stream") \
                and "answers" in transcript[0]:
            return {"params": params, "participants": [p.to_dict() for p in participants],
                    "responses": list(transcript[0]["answers"])}
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary,
                "default_deadline": self.default_deadline}


class OneRound(Protocol):
    """A driver for one-round protocols: invite every participant with `kind` and the
    round body, wait for the answers (or the deadline), decide, write."""

    kind: str = "request"
    # A mechanism whose decision can take long (a solver: winner determination, market
    # equilibria) is decided in a thread: the worker's event loop keeps sending heartbeats
    # and serving its shard meanwhile. Decided on the loop, a 5 s solve outlived the
    # heartbeat timeout and the worker was killed as hung, the session with it.
    heavy: bool = False

    def round_body(self, params: dict[str, Any]) -> Any:
        return params

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        return {}

    def participants_for(self, session: Session) -> list[dict[str, Any]]:
        """The participant maps decide(inputs) gets in a session. A subclass that overrides
        this is run the way it was written: decide(inputs) with its maps, not decide_typed."""
        return [p.to_dict() for p in session.participants]

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        """The mechanism on what a session holds: `params` as check_params returned them,
        and at most one response per participant, each of which passed check_response, in
        arrival order (ascending seq). Nothing here is checked again. The default hands
        decide() the inputs map it documents, so a protocol written against decide(inputs)
        alone keeps working; one that implements this makes decide(inputs) its adapter
        (decide_params, participants_of, responses_of and the value checks, then this), and
        both must give the same outcome on the same data."""
        return self.decide(round_inputs(params, [p.to_dict() for p in participants],
                                        responses))

    async def run(self, session: Session) -> Outcome:
        answers = await session.ask([p.id for p in session.participants], self.kind,
                                    self.round_body(session.params))
        responses = list(answers.values())  # ask() returns them in arrival order
        if type(self).participants_for is OneRound.participants_for:
            if self.heavy:
                result = await asyncio.to_thread(self.decide_typed, session.params,
                                                 session.participants, responses)
            else:
                result = self.decide_typed(session.params, session.participants, responses)
        else:
            result = self.decide(round_inputs(session.params, self.participants_for(session),
                                              responses))
        return Outcome(result, self.writes(session, result))


def round_inputs(params: dict[str, Any], participants: list[dict[str, Any]],
                 responses: Iterable[Response]) -> dict[str, Any]:
    """decide()'s inputs map for one round of answers (what `protocols eval` reads)."""
    return {"params": params, "participants": participants,
            "responses": [r.to_dict() for r in responses]}


_SEQ = attrgetter("seq")


def by_arrival(latest: Mapping[str, Response]) -> list[Response]:
    """The answers responses_of kept, in arrival order: what decide_typed takes. The sort is
    stable, so hand-written inputs with equal seqs keep their order in the input."""
    return sorted(latest.values(), key=_SEQ)


def terms(allocation: Mapping[str, Any], payments: Mapping[str, float], price: float | None,
          welfare: float | None) -> dict[str, Any]:
    """The outcome vocabulary every economic mechanism shares (docs/protocols.md, "Outcome
    vocabulary"): `allocation` what each agent ends up with, by agent; `payments` the money
    each agent pays, by agent (negative: it is paid, as a seller is); `revenue` their sum,
    what the auctioneer or market maker keeps; `price` the one per-unit price every trade
    cleared at, or None when there is none; `welfare` the total value of the allocation by
    the participants' own reports (bids, limits), None when the mechanism does not learn it.
    One function so that revenue is always the rounded sum of the payments shown."""
    paid = {a: cents(v) for a, v in sorted(payments.items())}
    return {"allocation": dict(sorted(allocation.items())), "payments": paid,
            "revenue": cents(sum(paid.values())), "price": price,
            "welfare": None if welfare is None else cents(welfare)}


def write_all(names: Iterable[str], value: Any) -> dict[str, Any]:
    """The same new value for each of `names` (an outcome's writes)."""
    return {n: value for n in names}


# --- validation helpers for params and inputs (every error names the key) -----------------


def only(d: Mapping[str, Any], allowed: Iterable[str], what: str = "params") -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ProtocolError(f"{what}: unknown key(s) {', '.join(map(repr, unknown))}; "
                            f"allowed: {', '.join(sorted(allowed))}")


def number(d: Mapping[str, Any], key: str, default: float | None, *, lo: float | None = None,
           hi: float | None = None) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ProtocolError(f"{key} must be a finite number")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ProtocolError(f"{key} must be within [{lo}, {hi}]")
    return v


def integer(d: Mapping[str, Any], key: str, default: int | None, *, lo: int | None = None,
            hi: int | None = None) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"{key} must be an integer")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ProtocolError(f"{key} must be within [{lo}, {hi}]")
    return v


def money(d: Mapping[str, Any], key: str, default: float | None, *,
          positive: bool = False) -> float:
    """A finite amount >= 0 (> 0 with `positive`): prices, bids, limits."""
    v = number(d, key, default)
    if v < 0 or (positive and v == 0):
        raise ProtocolError(f"{key} must be {'> 0' if positive else '>= 0'}")
    return float(v)


# Amounts in outcomes are rounded to this many decimals, so that float noise from sums
# (0.1 + 0.2) never shows up as a payment of 0.30000000000000004.
DECIMALS = 9


def cents(x: float) -> float:
    return round(x, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def choice(d: Mapping[str, Any], key: str, default: str, options: Iterable[str]) -> str:
    v = d.get(key, default)
    opts = list(options)
    if v not in opts:
        raise ProtocolError(f"{key} must be one of {', '.join(opts)}")
    return str(v)


def participants_of(inputs: Mapping[str, Any]) -> list[Participant]:
    ps = inputs.get("participants")
    if not isinstance(ps, list):
        raise ProtocolError("inputs.participants must be a list")
    out = [Participant.from_dict(p) for p in ps]
    if len({p.id for p in out}) != len(out):
        raise ProtocolError("participant ids must be unique")
    return out


def responses_of(inputs: Mapping[str, Any], participants: Iterable[Participant], *,
                 first_wins: bool = False) -> dict[str, Response]:
    """The latest answer per participant (a later one replaces an earlier one; with
    `first_wins` the earliest stands), keyed by id; answers from non-participants are an
    error."""
    rs = inputs.get("responses", [])
    if not isinstance(rs, list):
        raise ProtocolError("inputs.responses must be a list")
    ids = {p.id for p in participants}
    out: dict[str, Response] = {}
    for i, raw in enumerate(rs):
        r = Response.from_dict(raw, i)
        if r.agent not in ids:
            raise ProtocolError(f"response from {r.agent!r}, who is not a participant")
        if r.agent not in out or (out[r.agent].seq > r.seq if first_wins
                                   else out[r.agent].seq <= r.seq):
            out[r.agent] = r
    return out
