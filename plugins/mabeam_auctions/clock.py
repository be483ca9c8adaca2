"""Clock auctions of one item: English (ascending) and Dutch (descending).

Both are driven round by round by the same pure clock the offline mechanism replays, so a
live auction and `protocols eval` on its round log always agree.

English. Round r asks every bidder still in whether it stays at price
start + (r-1) * increment: {"stay": true|false}. Activity rule: a bidder that says no or
does not answer within `round_timeout` is out for good. The clearing price:
  * when exactly one bidder stays in round r, it wins at round r's price (about the second
    highest value, rounded up to the increment);
  * when the last bidders all drop out in the same round, the winner is chosen among those
    still in the round before (earliest "stay" answer there, then agent id) at that round's
    price;
  * after `max_rounds` with several still in, the same tie-break at the last price;
  * the reserve is a floor: a lone bidder below it is asked once more at the reserve and wins
    there if it stays; otherwise there is no sale.

Dutch. Tick k offers the item at start - k * decrement to every participant: answer
{"accept": true|false}. The first acceptance wins (earliest arrival, then agent id) and pays
that tick's price. A tick lasts at most `tick` seconds (it ends early once everyone has
answered). The clock stops without a sale below the reserve.

Offline (`protocols eval`) the clock replays either a log of answers (`rounds`) or runs on
proxy bidders (`values`: AGENT -> value), so "who wins at what price" needs no log. A proxy
answers every round it is asked, in agent-id order (so among proxies the earliest answer is
the lowest id's), and says yes exactly when the announced price is at most its value: it
stays in the English clock up to its value, and takes the Dutch item at the first tick at or
below it. Those are the truthful strategies; a bidder that would shade its Dutch bid (the
first-price equivalent) is modelled by giving the shaded value. The outcome is the one the
same answers given as `rounds` produce (tested).
"""

from __future__ import annotations

from typing import Any

from mabeam_auctions.common import sale_terms, sale_trade, sale_writes
from mabeamd.protocol import (
    Outcome,
    Participant,
    Protocol,
    ProtocolError,
    Response,
    Session,
    Trade,
    cents,
    integer,
    money,
    number,
    only,
    participants_of,
)

INPUTS = {"params", "participants", "rounds", "values"}


def _answer(value: Any, key: str) -> bool:
    if not isinstance(value, dict) or set(value) != {key} or not isinstance(value[key], bool):
        raise ProtocolError(f'answer with {{"{key}": true}} or {{"{key}": false}}')
    return bool(value[key])


def _rounds(inputs: dict[str, Any], ids: set[str]) -> list[list[Response]]:
    rounds = inputs.get("rounds", [])
    if not isinstance(rounds, list) or not all(isinstance(r, list) for r in rounds):
        raise ProtocolError("inputs.rounds must be a list of rounds, each a list of responses")
    out = []
    seq = 0
    for rnd in rounds:
        rs = []
        for raw in rnd:
            r = Response.from_dict(raw, seq)
            seq += 1
            if r.agent not in ids:
                raise ProtocolError(f"response from {r.agent!r}, who is not a participant")
            rs.append(r)
        out.append(rs)
    return out


def _values(inputs: dict[str, Any], ids: set[str]) -> dict[str, float]:
    values = inputs["values"]
    if "rounds" in inputs:
        raise ProtocolError("give rounds (a log of answers) or values (proxy bidders), not both")
    if not isinstance(values, dict):
        raise ProtocolError("inputs.values must map participant ids to their values")
    strangers = sorted(str(a) for a in values if a not in ids)
    if strangers:
        raise ProtocolError(f"values for {', '.join(strangers)}, who are not participants")
    return {a: money(values, a, None) for a in sorted(values)}


def proxy_rounds(clock: Any, values: dict[str, float], key: str) -> list[list[Response]]:
    """Run `clock` to its end on proxy bidders (module docstring); the answers, by round."""
    played: list[list[Response]] = []
    seq = 0
    while not clock.done:
        price = clock.announce()["price"]
        answers = []
        for agent in sorted(clock.asked()):
            if agent in values:
                answers.append(Response(agent, {key: price <= values[agent]}, seq))
                seq += 1
        played.append(answers)
        clock.step(answers)
    return played


class EnglishClock:
    """The ascending clock's state; `step` takes one round's answers."""

    def __init__(self, params: dict[str, Any], bidders: list[str]) -> None:
        self.p = params
        self.active = sorted(bidders)
        self.round = 0
        self.price = params["start"]
        self.history: list[dict[str, Any]] = []
        self.done = not bidders
        self.winner: str | None = None
        self.paid: float | None = None
        self._final_call = False
        self._prev_first: str | None = None

    def step(self, answers: list[Response]) -> None:
        """Apply one round's answers (any order; only each agent's latest counts)."""
        if self.done:
            raise ProtocolError("the clock has already stopped")
        latest: dict[str, Response] = {}
        for r in answers:
            if r.agent in self.active and (r.agent not in latest or latest[r.agent].seq < r.seq):
                latest[r.agent] = r
        stayers = sorted((r for r in latest.values() if _answer(r.value, "stay")),
                         key=lambda r: (r.seq, r.agent))
        self.history.append({"round": self.round + 1, "price": cents(self.price),
                             "in": sorted(r.agent for r in stayers)})
        self.round += 1
        if self._final_call or not stayers:
            if stayers:
                self._sell(stayers[0].agent, self.price)
            elif not self._final_call and self.round > 1:
                # Everyone left at once: tie-break among the previous round's stayers.
                assert self._prev_first is not None
                self._sell(self._prev_first, self.price - self.p["increment"])
            self.done = True
            return
        self._prev_first = stayers[0].agent
        self.active = sorted(r.agent for r in stayers)
        if len(stayers) == 1 or self.round >= self.p["max_rounds"]:
            if self.price >= self.p["reserve"] or len(stayers) > 1:
                self._sell(stayers[0].agent, self.price)
                self.done = True
            else:
                self.price, self._final_call = self.p["reserve"], True
            return
        self.price = self.p["start"] + self.round * self.p["increment"]

    def asked(self) -> list[str]:
        return self.active

    def announce(self) -> dict[str, Any]:
        return {"item": self.p["item"], "price": cents(self.price), "round": self.round + 1,
                "in": len(self.active)}

    def _sell(self, agent: str, price: float) -> None:
        if price >= self.p["reserve"]:
            self.winner, self.paid = agent, cents(price)

    def result(self) -> dict[str, Any]:
        # welfare: a clock learns only that the winner's value reaches the price, not the value
        return {"item": self.p["item"], **sale_terms(self.p["item"], self.winner, self.paid, None),
                "winner": self.winner, "price": self.paid,
                "rounds": self.round, "stopped": self.done, "history": self.history}


class DutchClock:
    def __init__(self, params: dict[str, Any], bidders: list[str]) -> None:
        self.p = params
        self.bidders = bidders
        self.tick = 0
        self.winner: str | None = None
        self.paid: float | None = None
        self.done = not bidders or self.price < params["reserve"]
        self.accepted: list[str] = []

    @property
    def price(self) -> float:
        return float(self.p["start"] - self.tick * self.p["decrement"])

    def asked(self) -> list[str]:
        return self.bidders

    def announce(self) -> dict[str, Any]:
        return {"item": self.p["item"], "price": cents(self.price), "tick": self.tick}

    def step(self, answers: list[Response]) -> None:
        if self.done:
            raise ProtocolError("the clock has already stopped")
        yes = sorted((r for r in answers if _answer(r.value, "accept")),
                     key=lambda r: (r.seq, r.agent))
        if yes:
            self.winner, self.paid = yes[0].agent, cents(self.price)
            self.accepted = [r.agent for r in yes]
            self.done = True
            return
        self.tick += 1
        if self.price < self.p["reserve"] - 1e-12 or self.tick >= self.p["max_ticks"]:
            self.done = True

    def result(self) -> dict[str, Any]:
        return {"item": self.p["item"], **sale_terms(self.p["item"], self.winner, self.paid, None),
                "winner": self.winner, "price": self.paid,
                "ticks": self.tick + (1 if self.winner else 0), "stopped": self.done,
                "accepted_same_tick": self.accepted}


class _Clocked(Protocol):
    kind = "price"
    answer_key = "stay"
    wait_param = "round_timeout"  # the param bounding how long one round waits

    def clock(self, params: dict[str, Any], bidders: list[str]) -> Any:
        raise NotImplementedError

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        _answer(value, self.answer_key)

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        only(inputs, INPUTS, "inputs")
        params = self.check_params(dict(inputs.get("params") or {}))
        ps = participants_of(inputs)
        clock = self.clock(params, [p.id for p in ps])
        if "values" in inputs:
            proxy_rounds(clock, _values(inputs, {p.id for p in ps}), self.answer_key)
            return dict(clock.result())
        for rnd in _rounds(inputs, {p.id for p in ps}):
            if clock.done:
                raise ProtocolError("more rounds than the clock ran: it had already stopped")
            clock.step(rnd)
        out: dict[str, Any] = clock.result()
        return out

    def audit_inputs(self, params: dict[str, Any], participants: list[Participant],
                     transcript: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Every clock round's answers, in order: decide() replays the clock on them."""
        return {"params": params, "participants": [p.to_dict() for p in participants],
                "rounds": [list(r.get("answers", [])) for r in transcript]}

    def check_outcome(self, session: Session, outcome: Outcome) -> None:
        r = outcome.result
        if r["winner"] is not None and (r["price"] < session.params["reserve"] - 1e-9
                                        or r["price"] < 0):
            raise ProtocolError(f"price {r['price']} is below the reserve")

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        return sale_writes(session, result)

    def trade(self, result: dict[str, Any]) -> Trade | None:
        return sale_trade(result)

    async def run(self, session: Session) -> Outcome:
        clock = self.clock(session.params, [x.id for x in session.participants])
        while not clock.done:
            answers = await session.ask(clock.asked(), self.kind, clock.announce(),
                                        timeout=session.params[self.wait_param])
            clock.step(list(answers.values()))
        result: dict[str, Any] = clock.result()
        return Outcome(result, self.writes(session, result))


class English(_Clocked):
    name = "english"
    summary = ("English (ascending clock) auction: start price, increment, activity rule, "
               "reserve; the last bidder in wins at the clock price")
    default_deadline = 60.0

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, {"item", "start", "increment", "reserve", "max_rounds", "round_timeout"})
        return {"item": params.get("item"), "start": money(params, "start", 0.0),
                "increment": money(params, "increment", 1.0, positive=True),
                "reserve": money(params, "reserve", 0.0),
                "max_rounds": integer(params, "max_rounds", 1000, lo=1, hi=1_000_000),
                "round_timeout": number(params, "round_timeout", 1.0, lo=0.001, hi=3600)}

    def clock(self, params: dict[str, Any], bidders: list[str]) -> EnglishClock:
        return EnglishClock(params, bidders)


class Dutch(_Clocked):
    name = "dutch"
    summary = ("Dutch (descending clock) auction: start, decrement, tick, reserve; the first "
               "acceptance wins at the current price")
    answer_key = "accept"
    wait_param = "tick"
    default_deadline = 60.0

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, {"item", "start", "decrement", "reserve", "tick", "max_ticks"})
        return {"item": params.get("item"), "start": money(params, "start", None),
                "decrement": money(params, "decrement", None, positive=True),
                "reserve": money(params, "reserve", 0.0),
                "tick": number(params, "tick", 0.1, lo=0.001, hi=3600),
                "max_ticks": integer(params, "max_ticks", 100_000, lo=1, hi=10_000_000)}

    def clock(self, params: dict[str, Any], bidders: list[str]) -> DutchClock:
        return DutchClock(params, bidders)
