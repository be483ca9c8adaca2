"""Every bundled one-round protocol decides twice over: `decide_typed` on what a live session
holds (the engine's path) and `decide(inputs)` on the JSON a `protocols eval` file would hold
for the same round (the adapter: parse, check, then the typed path). Random rounds, with
resubmissions among the JSON responses, must give the same outcome -- ties, order and
rounding included -- or the same error."""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mabeam_auctions.combinatorial import Combinatorial
from mabeam_auctions.sealed import SealedBid
from mabeam_markets.callmarket import CallMarket
from mabeam_markets.exchangemarket import ExchangeMarket
from mabeam_markets.fisher import FisherMarket
from mabeam_markets.stepcurve import SupplyDemand

from mabeam_contractnet import ContractNet
from mabeam_priority import Priority
from mabeam_voting import Consensus, Vote, WeightedVote
from mabeam_voting.approval import ApprovalVote
from mabeam_voting.ranked import RankedVote
from mabeamd.protocol import OneRound, Participant, Response
from mabeamd.testing import both_ways

AMOUNT = st.one_of(st.integers(0, 30), st.sampled_from([0.1, 0.2, 7.25, 12.5, 30.0]))
OPTIONS = ["x", "y", "z"]
ITEMS = ["i", "j", "k"]
ORDER = st.fixed_dictionaries({"side": st.sampled_from(["buy", "sell"]),
                               "price": AMOUNT, "quantity": st.integers(1, 4)})
STEPS = st.lists(st.tuples(AMOUNT, st.sampled_from([1, 2, 0.5, 3.25])).map(list),
                 min_size=1, max_size=3)
AGENT = st.sampled_from([f"a{i}" for i in range(6)])

# protocol name -> (protocol, params, one participant's answer)
CASES: dict[str, tuple[Any, st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "sealed_bid": (
        SealedBid(),
        st.fixed_dictionaries({"rule": st.sampled_from(["first", "second"]),
                               "reserve": AMOUNT, "resubmit": st.booleans()}),
        st.one_of(st.builds(lambda b: {"bid": b}, AMOUNT), st.just({"pass": True}))),
    "consensus": (
        Consensus(), st.just({"proposal": {"v": 1}}),
        st.one_of(st.builds(lambda a: {"accept": a}, st.booleans()),
                  st.just({"accept": False, "reason": "busy"}))),
    "vote": (
        Vote(),
        st.fixed_dictionaries({
            "options": st.just(OPTIONS),
            "rule": st.sampled_from(["majority", "supermajority", "unanimous", "plurality"]),
            "comparison": st.sampled_from(["strict", "at_least"]),
            "base": st.sampled_from(["votes", "present", "eligible"]),
            "quorum": st.sampled_from([0, 0.5, "2/3", 1]),
            "quorum_counts": st.sampled_from(["present", "votes"]),
            "tie_break": st.sampled_from(["none", "option_order", "chair"])}),
        st.one_of(st.builds(lambda o: {"vote": o}, st.sampled_from(OPTIONS)),
                  st.just({"abstain": True}))),
    "weighted_vote": (
        WeightedVote(),
        st.fixed_dictionaries({
            "options": st.just(OPTIONS), "rule": st.sampled_from(["majority", "plurality"]),
            "weights": st.dictionaries(AGENT, st.sampled_from([0, 0.5, 2, 3.5]), max_size=3),
            "weight_key": st.sampled_from([None, "w"])}),
        st.one_of(st.builds(lambda o: {"vote": o}, st.sampled_from(OPTIONS)),
                  st.just({"abstain": True}))),
    "ranked_vote": (
        RankedVote(),
        st.fixed_dictionaries({
            "options": st.just(OPTIONS),
            "method": st.sampled_from(["borda", "copeland", "schulze", "irv", "condorcet"]),
            "completion": st.sampled_from(["copeland", "schulze"]),
            "tie_break": st.sampled_from(["none", "option_order", "chair"]),
            "weights": st.dictionaries(AGENT, st.sampled_from([0, 0.5, 2, 3.5]), max_size=3)}),
        st.one_of(st.builds(lambda r: {"ranking": r},
                            st.lists(st.sampled_from(OPTIONS), min_size=1, unique=True)),
                  st.just({"abstain": True}))),
    "approval_vote": (
        ApprovalVote(),
        st.fixed_dictionaries({
            "options": st.just(OPTIONS), "seats": st.integers(1, 3),
            "rule": st.sampled_from(["approval", "pav", "seq_pav"]),
            "resolute": st.booleans(),
            "tie_break": st.sampled_from(["none", "option_order", "chair"]),
            "weights": st.dictionaries(AGENT, st.sampled_from([0, 0.5, 2, 3.5]), max_size=3)}),
        st.one_of(st.builds(lambda a: {"approve": a},
                            st.lists(st.sampled_from(OPTIONS), unique=True)),
                  st.just({"abstain": True}))),
    "contract_net": (
        ContractNet(),
        st.fixed_dictionaries({"score": st.just({"cost": 1, "eta": 0.5}),
                               "constraints": st.just({"eta": {"max": 20}}),
                               "award": st.integers(1, 3)}),
        st.one_of(st.builds(lambda c, e: {"propose": {"cost": c, "eta": e}}, AMOUNT,
                            st.integers(0, 25)),
                  st.just({"refuse": "busy"}))),
    "priority": (
        Priority(),
        st.fixed_dictionaries(
            {"capacity": st.integers(0, 12),
             "strategy": st.sampled_from(["priority", "proportional", "escalation"]),
             "priorities": st.dictionaries(AGENT, st.integers(-2, 2), max_size=3)},
            optional={"decision": st.builds(lambda a, n: {"allocations": {a: n}}, AGENT,
                                            st.integers(0, 3))}),
        st.builds(lambda n: {"request": n}, st.integers(0, 6))),
    "combinatorial": (
        Combinatorial(),
        st.fixed_dictionaries({
            "items": st.just(ITEMS),
            "reserve": st.dictionaries(st.sampled_from(ITEMS), st.integers(0, 5)),
            "payment": st.sampled_from(["vcg", "pay_as_bid"])}),
        st.one_of(st.just({"pass": True}), st.builds(lambda bs: {"bids": bs}, st.lists(
            st.fixed_dictionaries({
                "items": st.lists(st.sampled_from(ITEMS), min_size=1, max_size=3,
                                  unique=True),
                "price": AMOUNT}), max_size=3)))),
    "call_market": (
        CallMarket(),
        st.fixed_dictionaries({"rule": st.sampled_from(["k_double", "mcafee"]),
                               "kappa": st.sampled_from([0, 0.25, 0.5, 1])}),
        st.one_of(ORDER, st.just({"pass": True}),
                  st.builds(lambda os: {"orders": os}, st.lists(ORDER, max_size=3)))),
    "supply_demand": (
        SupplyDemand(), st.just({"good": "kWh"}),
        st.one_of(st.builds(lambda d: {"demand": d}, STEPS),
                  st.builds(lambda s: {"supply": s}, STEPS),
                  st.builds(lambda d, s: {"demand": d, "supply": s}, STEPS, STEPS))),
    "fisher_market": (
        FisherMarket(),
        st.fixed_dictionaries({"goods": st.just({"g": 1, "h": 2.5}),
                               "utility": st.sampled_from(["linear", "cobb_douglas"])}),
        st.builds(lambda b, g, h: {"budget": b, "utilities": {"g": g, "h": h + 1}},
                  st.integers(1, 9), st.integers(0, 4), st.integers(0, 4))),
    "exchange_market": (
        ExchangeMarket(),
        st.fixed_dictionaries({"goods": st.just(["g", "h"]),
                               "utility": st.sampled_from(["linear", "cobb_douglas"])}),
        st.builds(lambda e, f, g, h: {"endowment": {"g": e, "h": f},
                                      "utilities": {"g": g, "h": h + 1}},
                  st.integers(0, 5), st.integers(0, 5), st.integers(0, 4), st.integers(0, 4))),
}


def a_round(proto: Any, params: dict[str, Any], answers: list[tuple[int, Any]],
            ) -> tuple[list[Response], list[Response]]:
    """Answers as the engine takes them, in arrival order: (what the round keeps, one per
    agent in arrival order; what it replaced or refused)."""
    kind = getattr(proto, "kind", "cfp")  # contract_net is no OneRound: its first round
    first_wins = not proto.resubmit(kind, proto.check_params(dict(params)))
    kept: dict[str, Response] = {}
    dropped: list[Response] = []
    for seq, (who, value) in enumerate(answers, start=1):
        r = Response(f"a{who}", value, seq, round(0.003 * seq, 6))
        if r.agent in kept and first_wins:
            dropped.append(r)  # the engine refuses it with `conflict`
            continue
        if r.agent in kept:
            dropped.append(kept.pop(r.agent))
        kept[r.agent] = r
    return sorted(kept.values(), key=attrgetter("seq")), dropped


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_decide_typed_agrees_with_the_json_adapter(name: str, data: st.DataObject) -> None:
    proto, params_of, answer = CASES[name]
    params = data.draw(params_of, label="params")
    n = data.draw(st.integers(0, 6), label="participants")
    participants = [Participant(f"a{i}", weight=data.draw(st.sampled_from([0.0, 1.0, 2.5])),
                                priority=data.draw(st.integers(0, 3)),
                                metadata=data.draw(st.sampled_from([{}, {"w": 4}])))
                    for i in range(n)]
    answers = data.draw(st.lists(st.tuples(st.integers(0, n - 1), answer), max_size=12)
                        if n else st.just([]), label="answers in arrival order")
    kept, dropped = a_round(proto, params, answers)
    typed, adapted = both_ways(proto, params, participants, kept, dropped)
    assert typed == adapted


def test_the_property_sees_both_outcomes_and_errors() -> None:
    """The comparison above is not vacuous: both paths return outcomes, and an error (no
    participant) comes back as the same error from both."""
    proto = SealedBid()
    ps = [Participant("a0"), Participant("a1")]
    kept, dropped = a_round(proto, {}, [(0, {"bid": 5}), (1, {"bid": 9}), (0, {"bid": 11})])
    typed, adapted = both_ways(proto, {}, ps, kept, dropped)
    assert typed == adapted and typed["winner"] == "a0" and typed["price"] == 9
    assert [r.agent for r in kept] == ["a1", "a0"] and len(dropped) == 1
    typed, adapted = both_ways(Vote(), {"options": OPTIONS}, [], [], [])
    assert typed == adapted == ("error", "a vote needs at least one participant")


class Legacy(OneRound):
    """A third-party protocol written against decide(inputs) only."""

    name = "legacy"

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"inputs": inputs}


def test_default_decide_typed_hands_decide_the_documented_inputs() -> None:
    ps = [Participant("a", 2.0, 1, {"k": 1})]
    rs = [Response("a", {"v": 1}, 7, 0.5)]
    out = Legacy().decide_typed({"p": 1}, ps, rs)
    assert out == {"inputs": {
        "params": {"p": 1},
        "participants": [{"id": "a", "weight": 2.0, "priority": 1, "metadata": {"k": 1}}],
        "responses": [{"agent": "a", "value": {"v": 1}, "seq": 7, "at": 0.5}]}}
