"""The built-in protocols' pure mechanisms: property tests against independent re-statements
of their rules, plus the documented examples and tie-breaks."""

from __future__ import annotations

import itertools
import json
import random
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mabeam_contractnet import ContractNet
from mabeam_priority import Priority
from mabeam_voting import Consensus, Vote, WeightedVote
from mabeamd.protocol import ProtocolError

IDS = [f"a{i}" for i in range(8)]
ABC = ["a", "b", "c"]


def inputs(params: dict[str, Any], ids: list[str], answers: dict[str, Any],
           weights: dict[str, float] | None = None) -> dict[str, Any]:
    return {"params": params,
            "participants": [{"id": i, "weight": (weights or {}).get(i, 1.0)} for i in ids],
            "responses": [{"agent": a, "value": v, "seq": n}
                          for n, (a, v) in enumerate(answers.items())]}


# --- consensus ------------------------------------------------------------------------------


@given(st.lists(st.sampled_from([True, False, None]), min_size=1, max_size=8))
def test_consensus_passes_only_when_everyone_accepts(votes: list[bool | None]) -> None:
    ids = IDS[: len(votes)]
    answers = {i: {"accept": v} for i, v in zip(ids, votes, strict=True) if v is not None}
    out = Consensus().decide(inputs({"proposal": 1}, ids, answers))
    assert out["passed"] == all(v is True for v in votes)
    assert sorted(out["accepted"] + out["rejected"] + out["missing"]) == sorted(ids)
    assert out["missing"] == sorted(i for i, v in zip(ids, votes, strict=True) if v is None)


def test_consensus_refuses_malformed_answers_and_strangers() -> None:
    with pytest.raises(ProtocolError, match="accept"):
        Consensus().decide(inputs({"proposal": 1}, ["a"], {"a": {"yes": True}}))
    with pytest.raises(ProtocolError, match="not a participant"):
        Consensus().decide(inputs({"proposal": 1}, ["a"], {"b": {"accept": True}}))
    with pytest.raises(ProtocolError, match="proposal"):
        Consensus().decide(inputs({}, ["a"], {}))


# --- voting ---------------------------------------------------------------------------------


def reference_vote(params: dict[str, Any], weights: dict[str, int],
                   ballots: dict[str, Any]) -> tuple[Any, str]:
    """The rules of docs/protocols.md, restated with integers and cross-multiplication."""
    options = params["options"]
    tally = {o: sum(weights[a] for a, b in ballots.items() if b == o) for o in options}
    present = sum(weights[a] for a in ballots)
    votes = sum(tally.values())
    eligible = sum(weights.values())
    q = Fraction(str(params.get("quorum", 0)))
    have = present if params.get("quorum_counts", "present") == "present" else votes
    if have * q.denominator < q.numerator * eligible:
        return None, "no_quorum"
    if votes == 0:
        return None, "no_votes"
    base = {"votes": votes, "present": present, "eligible": eligible}[params.get("base",
                                                                                 "votes")]
    rule = params.get("rule", "majority")
    default_cmp = "at_least" if rule == "supermajority" else "strict"
    strict = params.get("comparison", default_cmp) == "strict" and rule != "unanimous"
    frac = {"majority": Fraction(1, 2), "unanimous": Fraction(1), "plurality": Fraction(0),
            "supermajority": Fraction(str(params.get("fraction", "2/3")))}[rule]

    def ok(w: int) -> bool:
        lhs, rhs = w * frac.denominator, frac.numerator * base
        return w > 0 and (lhs > rhs if strict else lhs >= rhs)

    good = [o for o in options if ok(tally[o])]
    if not good:
        return None, "threshold_not_met"
    top = max(tally[o] for o in good)
    best = [o for o in good if tally[o] == top]
    if len(best) > 1 and params.get("tie_break", "none") == "none":
        return None, "tie"
    if len(best) > 1 and params["tie_break"] == "chair":
        # the heaviest voter for a tied option (equal weights: lowest id) picks its option
        chair = min((a for a, b in ballots.items() if b in best),
                    key=lambda a: (-weights[a], a))
        return ballots[chair], "decided"
    return best[0], "decided"


vote_params = st.fixed_dictionaries({"options": st.just(["x", "y", "z"])}, optional={
    "rule": st.sampled_from(["majority", "supermajority", "unanimous", "plurality"]),
    "comparison": st.sampled_from(["strict", "at_least"]),
    "base": st.sampled_from(["votes", "present", "eligible"]),
    "quorum": st.sampled_from([0, 0.25, 0.5, "2/3", 1]),
    "quorum_counts": st.sampled_from(["present", "votes"]),
    "tie_break": st.sampled_from(["none", "option_order", "chair"]),
    "fraction": st.sampled_from(["2/3", "3/4", 0.6]),
})


@settings(max_examples=400, deadline=None)
@given(vote_params, st.lists(st.sampled_from(["x", "y", "z", "abstain", None]), min_size=1,
                             max_size=8),
       st.lists(st.integers(0, 5), min_size=8, max_size=8))
def test_weighted_vote_matches_the_reference_rules(params: dict[str, Any], cast: list[Any],
                                                   ws: list[int]) -> None:
    ids = IDS[: len(cast)]
    weights = dict(zip(ids, ws, strict=False))
    ballots = {i: c for i, c in zip(ids, cast, strict=True) if c is not None}
    answers = {i: ({"abstain": True} if c == "abstain" else {"vote": c})
               for i, c in ballots.items()}
    out = WeightedVote().decide(inputs(params, ids, answers,
                                       {k: float(v) for k, v in weights.items()}))
    expected = reference_vote(params, weights,
                              {i: (None if c == "abstain" else c) for i, c in ballots.items()})
    assert (out["decision"], out["reason"]) == expected


@given(vote_params, st.lists(st.sampled_from(["x", "y", "z", None]), min_size=1, max_size=8),
       st.integers(1, 7), st.randoms())
def test_vote_ignores_weights_scaling_and_answer_order(params: dict[str, Any], cast: list[Any],
                                                       scale: int, rnd: random.Random) -> None:
    ids = IDS[: len(cast)]
    answers = {i: {"vote": c} for i, c in zip(ids, cast, strict=True) if c is not None}
    base = Vote().decide(inputs(params, ids, answers))
    # Plain votes count 1 each whatever the registered weights; weighted ones only compare.
    assert Vote().decide(inputs(params, ids, answers, dict.fromkeys(ids, 9.0))) == base
    scaled = WeightedVote().decide(inputs(params, ids, answers, dict.fromkeys(ids,
                                                                              float(scale))))
    assert (scaled["decision"], scaled["reason"]) == (base["decision"], base["reason"])
    items = list(answers.items())
    rnd.shuffle(items)
    assert Vote().decide(inputs(params, ids, dict(items))) == base


def test_vote_documented_cases() -> None:
    three = ["a", "b", "c"]
    maj = {"options": ["yes", "no"]}
    two_one = {"a": {"vote": "yes"}, "b": {"vote": "yes"}, "c": {"vote": "no"}}
    assert Vote().decide(inputs(maj, three, two_one))["decision"] == "yes"
    # 1 yes, 1 no, 1 abstention: over votes cast nobody has more than half.
    split = {"a": {"vote": "yes"}, "b": {"vote": "no"}, "c": {"abstain": True}}
    assert Vote().decide(inputs(maj, three, split))["reason"] == "threshold_not_met"
    # At least half: both qualify, equally heavy -> tie, unless the option order breaks it.
    assert Vote().decide(inputs({**maj, "comparison": "at_least"}, three, split))["reason"] \
        == "tie"
    assert Vote().decide(inputs({**maj, "comparison": "at_least", "tie_break": "option_order"},
                                three, split))["decision"] == "yes"
    # Quorum of 3/4 of the eligible: 2 of 3 present is not enough.
    assert Vote().decide(inputs({**maj, "quorum": 0.75}, three,
                                {"a": {"vote": "yes"}, "b": {"vote": "yes"}}))["reason"] == \
        "no_quorum"
    # Abstentions count towards quorum by default, not with quorum_counts=votes.
    assert Vote().decide(inputs({**maj, "quorum": 1}, three, split))["quorum_met"]
    assert not Vote().decide(inputs({**maj, "quorum": 1, "quorum_counts": "votes"}, three,
                                    split))["quorum_met"]


def test_weighted_vote_weight_sources() -> None:
    v = WeightedVote()
    data = {"params": {"options": ["x", "y"], "weight_key": "stake", "weights": {"c": 10}},
            "participants": [{"id": "a", "weight": 5, "metadata": {"stake": 1}},
                             {"id": "b", "weight": 2},
                             {"id": "c", "weight": 0, "metadata": {"stake": 0}}],
            "responses": [{"agent": "a", "value": {"vote": "x"}},
                          {"agent": "b", "value": {"vote": "x"}},
                          {"agent": "c", "value": {"vote": "y"}}]}
    out = v.decide(data)
    # a: metadata stake 1; b: registered weight 2; c: params.weights 10.
    assert out["tally"] == [{"option": "x", "weight": 3.0}, {"option": "y", "weight": 10.0}]
    assert out["decision"] == "y"


@pytest.mark.parametrize(("params", "match"), [
    ({"options": []}, "options"),
    ({"options": ["a", "a"]}, "distinct"),
    ({"options": ["a"], "rule": "most"}, "rule"),
    ({"options": ["a"], "quorum": 2}, "quorum"),
    ({"options": ["a"], "fraction": "x/y"}, "fraction"),
    ({"options": ["a"], "colour": 1}, "unknown"),
])
def test_vote_params_are_validated(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        Vote().check_params(params)


# --- contract net ---------------------------------------------------------------------------


proposals = st.dictionaries(st.sampled_from(IDS), st.one_of(
    st.just({"refuse": "busy"}),
    st.builds(lambda c, e: {"propose": {"cost": c, "eta": e}}, st.integers(0, 20),
              st.integers(0, 20))), max_size=8)


@settings(max_examples=300)
@given(proposals, st.integers(1, 3), st.sampled_from([None, 10, 15]))
def test_contract_net_awards_the_best_eligible_proposals(
        props: dict[str, Any], award: int, eta_max: int | None) -> None:
    params: dict[str, Any] = {"score": {"cost": 1, "eta": 0.5}, "award": award}
    if eta_max is not None:
        params["constraints"] = {"eta": {"max": eta_max}}
    out = ContractNet().decide(inputs(params, IDS, props))
    order = list(props)
    eligible = [(p["propose"]["cost"] + 0.5 * p["propose"]["eta"], order.index(a), a)
                for a, p in props.items() if "propose" in p and
                (eta_max is None or p["propose"]["eta"] <= eta_max)]
    expected = [a for _, _, a in sorted(eligible)][:award]
    assert [e["agent"] for e in out["awarded"]] == expected
    assert set(out["refused"]) == {a for a, p in props.items() if "refuse" in p}
    assert len(out["ranking"]) == len(eligible)


def test_contract_net_validates_proposals() -> None:
    with pytest.raises(ProtocolError, match="cost"):
        ContractNet().decide(inputs({}, ["a"], {"a": {"propose": {"eta": 1}}}))
    with pytest.raises(ProtocolError, match="score"):
        ContractNet().check_params({"score": {"cost": "cheap"}})


# --- priority / conflict resolution ---------------------------------------------------------


requests = st.dictionaries(st.sampled_from(IDS), st.integers(0, 12), max_size=8)


@settings(max_examples=400)
@given(requests, st.integers(0, 30), st.dictionaries(st.sampled_from(IDS), st.integers(-2, 2)))
def test_allocations_never_over_allocate(reqs: dict[str, int], capacity: int,
                                         prio: dict[str, int]) -> None:
    answers = {a: {"request": n} for a, n in reqs.items()}
    total = sum(reqs.values())
    for strategy in ("priority", "proportional"):
        out = Priority().decide(inputs({"capacity": capacity, "strategy": strategy,
                                        "priorities": prio}, IDS, answers))
        alloc = out["allocations"]
        assert sum(alloc.values()) == min(capacity, total)
        assert all(0 <= alloc[a] <= reqs[a] for a in alloc)
        if strategy == "proportional" and total > capacity:
            for a, n in alloc.items():  # the largest-remainder quota property
                quota = Fraction(capacity * reqs[a], total)
                assert quota - 1 < n < quota + 1
        if strategy == "priority":
            rank = sorted((a for a in reqs if reqs[a] > 0),
                          key=lambda a: (-prio.get(a, 0), list(reqs).index(a)))
            for hi, lo in itertools.combinations(rank, 2):
                if alloc[hi] < reqs[hi]:
                    assert alloc[lo] == 0, (hi, lo, alloc)


def test_vote_chair_tie_break_is_the_heaviest_tied_voter_then_lowest_id() -> None:
    ids = ["a1", "a2", "a3", "a4"]
    both = {"a1": {"vote": "y"}, "a2": {"vote": "x"}, "a3": {"vote": "z"},
            "a4": {"vote": "z"}}
    p = {"options": ["x", "y", "z"], "rule": "plurality", "tie_break": "chair"}
    # z leads outright: no tie, chair not consulted
    assert Vote().decide(inputs(p, ids, both))["decision"] == "z"
    tie = {"a2": {"vote": "x"}, "a1": {"vote": "y"}}
    assert Vote().decide(inputs(p, ids, tie))["decision"] == "y"  # a1 < a2
    tie_w = WeightedVote().decide(inputs({**p, "weights": {"a1": 3, "a2": 1, "a3": 2}},
                                         ids, {"a1": {"vote": "x"}, "a2": {"vote": "y"},
                                               "a3": {"vote": "y"}, "a4": {"abstain": True}}))
    assert (tie_w["decision"], tie_w["reason"]) == ("x", "decided")  # x 3 = y 3, a1 heaviest


def test_proportional_tie_break_is_priority_then_earliest() -> None:
    # 3 units over three equal requests of 2: quotas 1 each, no remainder.
    # 4 units: one leftover with equal remainders -> the earliest request gets it.
    ans = {"b": {"request": 2}, "a": {"request": 2}, "c": {"request": 2}}
    out = Priority().decide(inputs({"capacity": 4, "strategy": "proportional"}, ABC, ans))
    assert out["allocations"] == {"b": 2, "a": 1, "c": 1}
    out = Priority().decide(inputs({"capacity": 4, "strategy": "proportional",
                                    "priorities": {"c": 1}}, ABC, ans))
    assert out["allocations"] == {"c": 2, "b": 1, "a": 1}


def test_escalation_offline_with_and_without_a_decision() -> None:
    ans = {"a": {"request": 3}, "b": {"request": 2}}
    out = Priority().decide(inputs({"capacity": 4, "strategy": "escalation"}, ABC, ans))
    assert out["escalated"] and out["allocations"] == {}
    out = Priority().decide(inputs({"capacity": 4, "strategy": "escalation",
                                    "decision": {"allocations": {"a": 2, "b": 2}}}, ABC, ans))
    assert out["allocations"] == {"a": 2, "b": 2}
    with pytest.raises(ProtocolError, match="capacity"):
        Priority().decide(inputs({"capacity": 4, "strategy": "escalation",
                                  "decision": {"allocations": {"a": 3, "b": 2}}}, ABC, ans))


def test_outcomes_are_json_serialisable_and_deterministic() -> None:
    data = inputs({"options": ["x", "y"]}, IDS[:3], {"a0": {"vote": "x"}})
    assert json.dumps(Vote().decide(data)) == json.dumps(Vote().decide(data))


def test_every_example_in_docs_protocols_md_gives_its_documented_outcome() -> None:
    import re

    from mabeamd.plugins import PluginHost
    from mabeamd.testing import ROOT

    doc = (ROOT / "docs" / "protocols.md").read_text()
    host = PluginHost()
    host.load()
    protocols = host.protocols()
    examples = re.findall(r"<!-- example (\w+) -->.*?```json\n(.*?)```.*?```json\n(.*?)```",
                          doc, re.S)
    assert {name for name, _, _ in examples} == set(protocols)
    for name, given_in, expected in examples:
        assert protocols[name].decide(json.loads(given_in)) == json.loads(expected), name


def test_trade_figures_of_every_documented_example() -> None:
    """Protocol.trade on each docs/protocols.md outcome: None or a sane Trade, and for the
    sales the price paid."""
    import math
    import re

    from mabeamd.plugins import PluginHost
    from mabeamd.protocol import Trade
    from mabeamd.testing import ROOT

    doc = (ROOT / "docs" / "protocols.md").read_text()
    host = PluginHost()
    host.load()
    protocols = host.protocols()
    traded = set()
    for name, _, outcome in re.findall(
            r"<!-- example (\w+) -->.*?```json\n(.*?)```.*?```json\n(.*?)```", doc, re.S):
        result = json.loads(outcome)
        t = protocols[name].trade(result)
        if t is None:
            continue
        traded.add(name)
        assert isinstance(t, Trade) and t.revenue >= 0 and math.isfinite(t.revenue), name
        assert all(math.isfinite(p) and p >= 0 for p in t.prices), name
        if name in ("sealed_bid", "english", "dutch"):
            assert t == Trade(result["price"], (result["price"],)), name
        if name == "continuous_double_auction":
            assert t.revenue == sum(x["price"] * x["quantity"] for x in result["trades"])
    assert {"sealed_bid", "continuous_double_auction"} <= traded, traded
    for name in ("consensus", "priority", "contract_net"):
        assert protocols[name].trade({"winner": "a", "price": 1.0}) is None
    assert protocols["sealed_bid"].trade({"winner": None, "price": None}) is None
