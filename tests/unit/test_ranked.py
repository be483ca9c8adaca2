"""ranked_vote and approval_vote against first-principles implementations written here:
the Condorcet winner by definition, Schulze by enumerating every simple path, IRV by a plain
simulation, Borda and Copeland by direct counting, PAV / seq-PAV / approval committees by
brute force; plus textbook profiles and refusals."""

from __future__ import annotations

import itertools
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mabeam_voting.approval import ApprovalVote
from mabeam_voting.ranked import RankedVote
from mabeamd.protocol import ProtocolError

OPTS = ["a", "b", "c", "d"]
RV = RankedVote()


def run(params: dict[str, Any], ballots: list[tuple[str, list[str] | None]]) -> dict[str, Any]:
    ids = sorted({a for a, _ in ballots} | {"z0"})
    return RV.decide({
        "params": params, "participants": [{"id": i} for i in ids],
        "responses": [{"agent": a, "value": {"abstain": True} if r is None else {"ranking": r}}
                      for a, r in ballots]})


def prefers(r: list[str], x: str, y: str) -> bool:
    return x in r and (y not in r or r.index(x) < r.index(y))


def ref_d(opts: list[str], prof: list[tuple[Fraction, list[str]]], x: str, y: str) -> Fraction:
    return sum((w for w, r in prof if prefers(r, x, y)), Fraction(0))


def ref_condorcet(opts: list[str], prof: list[tuple[Fraction, list[str]]]) -> str | None:
    ws = [x for x in opts
          if all(ref_d(opts, prof, x, y) > ref_d(opts, prof, y, x) for y in opts if y != x)]
    assert len(ws) <= 1
    return ws[0] if ws else None


def ref_borda(opts: list[str], prof: list[tuple[Fraction, list[str]]]) -> dict[str, Fraction]:
    m = len(opts)
    return {o: sum((w * (m - 1 - r.index(o)) for w, r in prof if o in r), Fraction(0))
            for o in opts}


def ref_copeland(opts: list[str], prof: list[tuple[Fraction, list[str]]]) -> dict[str, int]:
    out = {}
    for x in opts:
        s = 0
        for y in opts:
            if y != x:
                a, b = ref_d(opts, prof, x, y), ref_d(opts, prof, y, x)
                s += 1 if a > b else -1 if a < b else 0
        out[x] = s
    return out


def ref_schulze_winners(opts: list[str], prof: list[tuple[Fraction, list[str]]]) -> list[str]:
    """Strength of the strongest path by enumerating every simple path."""
    def link(x: str, y: str) -> Fraction:
        a, b = ref_d(opts, prof, x, y), ref_d(opts, prof, y, x)
        return a if a > b else Fraction(0)

    def strongest(x: str, y: str) -> Fraction:
        best = Fraction(0)
        middle = [o for o in opts if o not in (x, y)]
        for k in range(len(middle) + 1):
            for via in itertools.permutations(middle, k):
                path = [x, *via, y]
                best = max(best, min(link(p, q) for p, q in itertools.pairwise(path)))
        return best

    return [x for x in opts if all(strongest(x, y) >= strongest(y, x) for y in opts if y != x)]


def ref_irv(opts: list[str], prof: list[tuple[Fraction, list[str]]]) -> list[str]:
    alive = list(opts)
    past: list[dict[str, Fraction]] = []
    while True:
        t = {o: Fraction(0) for o in alive}
        for w, r in prof:
            for o in r:
                if o in alive:
                    t[o] += w
                    break
        past.insert(0, t)
        total = sum(t.values())
        for o in alive:
            if 2 * t[o] > total:
                return [o]
        if len(set(t.values())) == 1:
            return alive
        low = [o for o in alive if t[o] == min(t.values())]
        for older in past[1:]:
            m = min(older[o] for o in low)
            low = [o for o in low if older[o] == m]
        alive.remove(max(low, key=opts.index))


RANKING = st.lists(st.sampled_from(OPTS), min_size=1, max_size=4, unique=True)
PROFILE = st.lists(st.tuples(st.sampled_from([0, 1, 1, 2, 3, 0.5]), RANKING),
                   min_size=1, max_size=7)


def params_and_ballots(profile: list[tuple[float, list[str]]], method: str,
                       **extra: Any) -> tuple[dict[str, Any], list[tuple[str, list[str] | None]],
                                              list[tuple[Fraction, list[str]]]]:
    weights = {f"v{i}": w for i, (w, _) in enumerate(profile)}
    ballots: list[tuple[str, list[str] | None]] = [(f"v{i}", r)
                                                   for i, (_, r) in enumerate(profile)]
    prof = [(Fraction(str(w)), r) for w, r in profile]
    return {"options": OPTS, "method": method, "weights": weights, **extra}, ballots, prof


def expect(out: dict[str, Any], winners: list[str], prof: list[tuple[Fraction, list[str]]]
           ) -> None:
    if not any(w > 0 for w, _ in prof):
        assert out["reason"] == "no_votes" and out["decision"] is None
    elif len(winners) == 1:
        assert (out["decision"], out["reason"], out["ties"]) == (winners[0], "decided", [])
    else:
        assert out["reason"] == "tie" and out["decision"] is None
        assert out["ties"] == sorted(winners, key=OPTS.index)


@settings(max_examples=150, deadline=None)
@given(PROFILE)
def test_borda_copeland_and_pairwise_by_direct_counting(profile: Any) -> None:
    params, ballots, prof = params_and_ballots(profile, "borda")
    out = run(params, ballots)
    ref = ref_borda(OPTS, prof)
    assert out["scores"] == {o: float(v) for o, v in ref.items()}
    expect(out, [o for o in OPTS if ref[o] == max(ref.values())], prof)
    for x in OPTS:
        for y in OPTS:
            if x != y:
                assert out["pairwise"][x][y] == float(ref_d(OPTS, prof, x, y))
    assert out["condorcet_winner"] == ref_condorcet(OPTS, prof)
    params["method"] = "copeland"
    out = run(params, ballots)
    cref = ref_copeland(OPTS, prof)
    assert out["scores"] == {o: float(v) for o, v in cref.items()}
    expect(out, [o for o in OPTS if cref[o] == max(cref.values())], prof)
    assert out["ranking"] == sorted(OPTS, key=lambda o: (-cref[o], OPTS.index(o)))


@settings(max_examples=120, deadline=None)
@given(PROFILE)
def test_schulze_matches_path_enumeration_and_condorcet(profile: Any) -> None:
    params, ballots, prof = params_and_ballots(profile, "schulze")
    out = run(params, ballots)
    winners = ref_schulze_winners(OPTS, prof)
    assert winners  # Schulze always has a winner
    expect(out, winners, prof)
    cw = ref_condorcet(OPTS, prof)
    if cw is not None:
        assert winners == [cw]
    for completion, ref in (("schulze", winners),
                            ("copeland", None)):
        params.update(method="condorcet", completion=completion)
        out = run(params, ballots)
        if cw is not None:
            expect(out, [cw], prof)
        elif ref is not None:
            expect(out, ref, prof)
        else:
            c = ref_copeland(OPTS, prof)
            expect(out, [o for o in OPTS if c[o] == max(c.values())], prof)


@settings(max_examples=150, deadline=None)
@given(PROFILE)
def test_irv_matches_a_plain_simulation(profile: Any) -> None:
    params, ballots, prof = params_and_ballots(profile, "irv")
    out = run(params, ballots)
    expect(out, ref_irv(OPTS, prof), prof)
    if out["reason"] != "no_votes":
        assert out["rounds"][0]["tallies"] == {o: float(sum(
            (w for w, r in prof if r[0] == o), Fraction(0))) for o in OPTS}
        last = out["rounds"][-1]["tallies"]
        assert out["scores"] == {o: last.get(o, 0.0) for o in OPTS}
        assert out["ranking"][:len(last)] == sorted(last, key=lambda o: (-last[o],
                                                                         OPTS.index(o)))


@settings(max_examples=100, deadline=None)
@given(PROFILE, st.sampled_from(["borda", "copeland", "schulze", "irv"]))
def test_tie_breaks(profile: Any, method: str) -> None:
    params, ballots, _ = params_and_ballots(profile, method)
    plain = run(params, ballots)
    if plain["reason"] != "tie":
        return
    ties = plain["ties"]
    assert run({**params, "tie_break": "option_order"}, ballots)["decision"] == ties[0]
    # chair by definition: heaviest voter ranking a tied option, then lowest id
    voters = [(Fraction(str(profile[i][0])), f"v{i}", r) for i, (_, r) in enumerate(profile)
              if any(o in r for o in ties)]
    _w, _agent, r = sorted(voters, key=lambda v: (-v[0], v[1]))[0]
    chair = run({**params, "tie_break": "chair"}, ballots)
    assert chair["decision"] == next(o for o in r if o in ties)
    assert chair["reason"] == "decided"


def wikipedia_schulze() -> list[tuple[str, list[str] | None]]:
    prof = [(5, "ACBED"), (5, "ADECB"), (8, "BEDAC"), (3, "CABED"), (7, "CAEBD"),
            (2, "CBADE"), (7, "DCEBA"), (8, "EBADC")]
    out: list[tuple[str, list[str] | None]] = []
    for n, r in prof:
        out += [(f"v{len(out) + k:02}", list(r)) for k in range(n)]
    return out


def test_wikipedia_schulze_example_45_voters_winner_e() -> None:
    out = run({"options": list("ABCDE"), "method": "schulze"}, wikipedia_schulze())
    assert out["decision"] == "E" and out["ranking"] == list("EACBD")
    assert out["pairwise"]["A"]["B"] == 20 and out["pairwise"]["B"]["A"] == 25
    assert out["condorcet_winner"] is None


def test_tennessee_capital_textbook_profile() -> None:
    # Memphis 42, Nashville 26, Chattanooga 15, Knoxville 17 (Wikipedia)
    prof = [(42, ["M", "N", "C", "K"]), (26, ["N", "C", "K", "M"]),
            (15, ["C", "K", "N", "M"]), (17, ["K", "C", "N", "M"])]
    ballots: list[tuple[str, list[str] | None]] = []
    for n, r in prof:
        ballots += [(f"v{len(ballots) + k:03}", r) for k in range(n)]
    opts = ["M", "N", "C", "K"]
    got = {m: run({"options": opts, "method": m}, ballots)["decision"]
           for m in ("borda", "copeland", "schulze", "condorcet", "irv")}
    assert got == {"borda": "N", "copeland": "N", "schulze": "N", "condorcet": "N",
                   "irv": "K"}
    irv = run({"options": opts, "method": "irv"}, ballots)
    assert [r["eliminated"] for r in irv["rounds"]] == ["C", "N", None]


def test_irv_elimination_tie_looks_back_then_at_option_order() -> None:
    # round 1: a 4, b 2, c 3, d 1 -> d out, its voter goes to b: a 4, b 3, c 3; b and c
    # tie, b had fewer in round 1 -> b out
    ballots: list[tuple[str, list[str] | None]] = [
        *[(f"v{i}", ["a"]) for i in range(4)], ("v4", ["b"]), ("v5", ["b"]),
        *[(f"v{i}", ["c"]) for i in range(6, 9)], ("v9", ["d", "b"])]
    out = run({"options": OPTS, "method": "irv"}, ballots)
    assert [r["eliminated"] for r in out["rounds"]] == ["d", "b", None]
    assert out["decision"] == "a"  # b's ballots are exhausted: a 4 of 7
    # b and c equal in every round: the later in options (c) goes
    ballots = [("v1", ["a"]), ("v2", ["a"]), ("v3", ["b"]), ("v4", ["c"])]
    out = run({"options": OPTS, "method": "irv"}, ballots)
    assert [r["eliminated"] for r in out["rounds"]] == ["d", "c", None]
    assert out["rounds"][-1]["tallies"] == {"a": 2.0, "b": 1.0}


def test_abstentions_and_zero_weights_are_no_votes() -> None:
    out = run({"options": OPTS, "weights": {"v1": 0}}, [("v1", ["a"]), ("v2", None)])
    assert (out["decision"], out["reason"]) == (None, "no_votes")


@pytest.mark.parametrize("params, message", [
    ({"options": []}, "non-empty list"),
    ({"options": ["a", "a"]}, "distinct"),
    ({"options": ["a", 1]}, "strings"),
    ({"options": ["a"], "method": "dowdall"}, "method"),
    ({"options": ["a"], "method": "condorcet", "completion": "irv"}, "completion"),
    ({"options": ["a"], "weights": {"x": -1}}, "weights"),
    ({"options": ["a"], "tie_break": "coin"}, "tie_break"),
    ({"options": ["a"], "quorum": 1}, "quorum"),
])
def test_bad_params_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        RV.check_params(params)


@pytest.mark.parametrize("value", [
    {"ranking": []}, {"ranking": ["a", "a"]}, {"ranking": ["q"]}, {"ranking": "a"},
    {"vote": "a"}, {"abstain": False}, {"ranking": ["a"], "abstain": True}, ["a"]])
def test_bad_ballots_are_refused(value: Any) -> None:
    with pytest.raises(ProtocolError):
        RV.check_response("ballot", value, {"options": OPTS})


# ---- approval_vote ---------------------------------------------------------------------

AV = ApprovalVote()


def run_av(params: dict[str, Any], ballots: list[tuple[str, list[str] | None]]
           ) -> dict[str, Any]:
    ids = sorted({a for a, _ in ballots} | {"z0"})
    return AV.decide({
        "params": params, "participants": [{"id": i} for i in ids],
        "responses": [{"agent": a, "value": {"abstain": True} if r is None else {"approve": r}}
                      for a, r in ballots]})


def ref_pav(opts: list[str], k: int, prof: list[tuple[Fraction, list[str]]]
            ) -> tuple[list[list[str]], Fraction]:
    def h(n: int) -> Fraction:
        return sum((Fraction(1, i) for i in range(1, n + 1)), Fraction(0))

    def score(c: tuple[str, ...]) -> Fraction:
        return sum((w * h(len(set(a) & set(c))) for w, a in prof), Fraction(0))

    allc = list(itertools.combinations(opts, k))
    best = max(score(c) for c in allc)
    return [list(c) for c in allc if score(c) == best], best


def ref_approval(opts: list[str], k: int, prof: list[tuple[Fraction, list[str]]]
                 ) -> list[list[str]]:
    s = {o: sum((w for w, a in prof if o in a), Fraction(0)) for o in opts}
    allc = list(itertools.combinations(opts, k))
    best = max(sum(s[o] for o in c) for c in allc)
    return [list(c) for c in allc if sum(s[o] for o in c) == best]


def ref_seq_pav(opts: list[str], k: int, prof: list[tuple[Fraction, list[str]]]
                ) -> list[list[str]]:
    found: set[tuple[str, ...]] = set()

    def grow(w: list[str]) -> None:
        if len(w) == k:
            found.add(tuple(sorted(w, key=opts.index)))
            return
        gain = {o: sum((wt / (len(set(a) & set(w)) + 1) for wt, a in prof if o in a),
                       Fraction(0)) for o in opts if o not in w}
        for o, g in gain.items():
            if g == max(gain.values()):
                grow([*w, o])

    grow([])
    return sorted((list(c) for c in found), key=lambda c: [opts.index(o) for o in c])


APPROVALS = st.lists(st.tuples(st.sampled_from([0, 1, 1, 2, 0.5]),
                               st.lists(st.sampled_from(OPTS), max_size=4, unique=True)),
                     min_size=1, max_size=7)


@settings(max_examples=150, deadline=None)
@given(APPROVALS, st.integers(1, 4), st.sampled_from(["approval", "pav", "seq_pav"]))
def test_approval_rules_match_brute_force(profile: Any, k: int, rule: str) -> None:
    weights = {f"v{i}": w for i, (w, _) in enumerate(profile)}
    ballots: list[tuple[str, list[str] | None]] = [(f"v{i}", a)
                                                   for i, (_, a) in enumerate(profile)]
    prof = [(Fraction(str(w)), a) for w, a in profile]
    params = {"options": OPTS, "seats": k, "rule": rule, "weights": weights,
              "resolute": False}
    out = run_av(params, ballots)
    assert out["scores"] == {o: float(sum((w for w, a in prof if o in a), Fraction(0)))
                             for o in OPTS}
    if not any(w > 0 and a for w, a in prof):
        assert (out["reason"], out["committee"]) == ("no_votes", None)
        return
    ref = {"approval": lambda: ref_approval(OPTS, k, prof),
           "pav": lambda: ref_pav(OPTS, k, prof)[0],
           "seq_pav": lambda: ref_seq_pav(OPTS, k, prof)}[rule]()
    assert out["committees"] == ref
    assert out["decided"] == (len(ref) == 1)
    resolute = run_av({**params, "resolute": True}, ballots)
    assert resolute["committee"] == ref[0] and resolute["decided"]
    if rule == "pav":
        assert resolute["pav_score"] == float(ref_pav(OPTS, k, prof)[1])
    assert run_av({**params, "resolute": True, "tie_break": "none"}, ballots)["decided"] == (
        len(ref) == 1)


def test_pav_is_proportional_where_approval_is_not() -> None:
    ballots: list[tuple[str, list[str] | None]] = [
        *[(f"v{i}", ["a", "b"]) for i in range(6)], *[(f"v{i}", ["c"]) for i in range(6, 10)]]
    base = {"options": OPTS, "seats": 2}
    assert run_av({**base, "rule": "approval"}, ballots)["committee"] == ["a", "b"]
    assert run_av({**base, "rule": "pav"}, ballots)["committee"] == ["a", "c"]
    assert run_av({**base, "rule": "seq_pav"}, ballots)["committee"] == ["a", "c"]


def test_approval_chair_tie_break() -> None:
    ballots: list[tuple[str, list[str] | None]] = [("v1", ["a"]), ("v2", ["b"])]
    params = {"options": OPTS, "tie_break": "chair", "weights": {"v2": 2}}
    assert run_av(params, ballots)["committee"] == ["b"]
    params["weights"] = {}
    assert run_av(params, ballots)["committee"] == ["a"]  # equal weights: lowest id v1


@pytest.mark.parametrize("params, message", [
    ({"options": OPTS, "seats": 0}, "seats"),
    ({"options": OPTS, "seats": 5}, "seats"),
    ({"options": OPTS, "seats": True}, "seats"),
    ({"options": OPTS, "rule": "stv"}, "rule"),
    ({"options": OPTS, "resolute": "yes"}, "resolute"),
    ({"options": [f"o{i}" for i in range(30)], "seats": 5, "rule": "pav"}, "seq_pav"),
])
def test_bad_approval_params_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        AV.check_params(params)


@pytest.mark.parametrize("value", [{"approve": ["a", "a"]}, {"approve": ["q"]},
                                   {"approve": "a"}, {"ranking": ["a"]}, {"abstain": 1}])
def test_bad_approval_ballots_are_refused(value: Any) -> None:
    with pytest.raises(ProtocolError):
        AV.check_response("ballot", value, {"options": OPTS})


@pytest.mark.parametrize("proto", [RV, AV])
def test_weights_come_from_params_then_metadata_then_registration(proto: Any) -> None:
    """As weighted_vote: params.weights[id], else metadata[weight_key], else the registered
    weight. Two voters for a, one heavier voter for b."""
    kind = "ranking" if proto is RV else "approve"
    base = {"options": ["a", "b"], **({"seats": 1} if proto is AV else {})}
    participants = [{"id": "v1"}, {"id": "v2"}, {"id": "w", "weight": 3,
                                                 "metadata": {"stake": 0.5}}]
    responses = [{"agent": "v1", "value": {kind: ["a"]}},
                 {"agent": "v2", "value": {kind: ["a"]}},
                 {"agent": "w", "value": {kind: ["b"]}}]

    def winner(**params: Any) -> Any:
        out = proto.decide({"params": {**base, **params}, "participants": participants,
                            "responses": responses})
        return out["decision"] if proto is RV else out["committee"]

    assert winner() in ("b", ["b"])  # registered weight 3 beats 1 + 1
    assert winner(weight_key="stake") in ("a", ["a"])  # metadata 0.5 loses to 2
    assert winner(weight_key="stake", weights={"w": 5}) in ("b", ["b"])  # params first
    assert winner(weight_key="missing") in ("b", ["b"])  # no such key: registered
    with pytest.raises(ProtocolError, match="weight_key"):
        proto.check_params({**base, "weight_key": 3})
