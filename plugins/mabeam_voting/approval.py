"""`approval_vote`: approval voting for one winner or a committee of `seats`. Pure counting.

A ballot approves a set of options. Weights are exact (fractions.Fraction); the outcome
reports floats.

    approval  the committees of the `seats` options with the highest approval weight
    pav       proportional approval voting: the committees maximising the sum over voters of
              weight * H(|approved & committee|), H(n) = 1 + 1/2 + ... + 1/n (exact),
              found by enumerating every committee (refused above MAX_COMMITTEES)
    seq_pav   sequential PAV: starting empty, add the option with the largest marginal PAV
              gain, `seats` times; ties at a step branch, every committee reached counts
              (refused when the branches exceed MAX_COMMITTEES)

Several optimal committees are a tie. `resolute` (default) picks one by `tie_break`:
`option_order` (the first committee, committees compared as lists of option positions),
`chair` (the heaviest voter approving anything, ties by lowest agent id: the tied committees
with the most of its approvals, then option order) or `none` (no decision, reason `tie`).
`resolute: false` lists every optimal committee in `committees` and decides only when there
is exactly one.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import cache
from itertools import combinations
from typing import Any

from mabeam_voting.ranked import check_options, check_weights, voter_weights
from mabeam_voting.tally import vote_writes, write_mode
from mabeamd.protocol import (
    OneRound,
    Participant,
    Protocol,
    ProtocolError,
    Response,
    Session,
    by_arrival,
    choice,
    only,
    participants_of,
    responses_of,
)

MAX_COMMITTEES = 20000
APPROVAL_RULES = ("approval", "pav", "seq_pav")

Ballot = tuple[str, Fraction, frozenset[str]]  # agent, weight, approved


def approved(value: Any, options: list[str]) -> list[str] | None:
    """The options a ballot approves, or None for an abstention; raises for anything else."""
    if isinstance(value, dict) and set(value) == {"abstain"} and value["abstain"] is True:
        return None
    if not isinstance(value, dict) or set(value) != {"approve"} or not isinstance(
            value["approve"], list):
        raise ProtocolError('a ballot is {"approve": [OPTION, ...]} or {"abstain": true}')
    a = value["approve"]
    for o in a:
        if not isinstance(o, str) or o not in options:
            raise ProtocolError(f"{o!r} is not one of the options {options!r}")
    if len(set(a)) != len(a):
        raise ProtocolError("an approval ballot must not repeat an option")
    return list(a)


@cache
def harmonic(n: int) -> Fraction:
    return sum((Fraction(1, i) for i in range(1, n + 1)), Fraction(0))


def pav_score(committee: frozenset[str], ballots: list[Ballot]) -> Fraction:
    return sum((w * harmonic(len(a & committee)) for _, w, a in ballots), Fraction(0))


def optimal_committees(params: dict[str, Any], ballots: list[Ballot],
                       scores: dict[str, Fraction]) -> list[frozenset[str]]:
    options: list[str] = params["options"]
    k: int = params["seats"]
    rule = params["rule"]
    if rule == "approval":
        t = sorted(scores.values(), reverse=True)[k - 1]
        must = [o for o in options if scores[o] > t]
        pool = [o for o in options if scores[o] == t]
        return [frozenset(must) | frozenset(c) for c in combinations(pool, k - len(must))]
    if rule == "pav":
        groups: dict[tuple[Fraction, frozenset[str]], int] = {}
        for _, wt, a in ballots:
            groups[wt, a] = groups.get((wt, a), 0) + 1
        grouped: list[Ballot] = [("", wt * n, a) for (wt, a), n in groups.items()]
        best: list[frozenset[str]] = []
        top = Fraction(-1)
        for c in combinations(options, k):
            fc = frozenset(c)
            s = pav_score(fc, grouped)
            if s > top:
                best, top = [fc], s
            elif s == top:
                best.append(fc)
        return best
    level: set[frozenset[str]] = {frozenset()}
    for _ in range(k):
        nxt: set[frozenset[str]] = set()
        for w in level:
            gains = {o: sum((wt / (len(a & w) + 1) for _, wt, a in ballots if o in a),
                            Fraction(0)) for o in options if o not in w}
            g = max(gains.values())
            nxt |= {w | {o} for o, v in gains.items() if v == g}
        if len(nxt) > MAX_COMMITTEES:
            raise ProtocolError(f"seq_pav ties branch into more than {MAX_COMMITTEES} "
                                "committees")
        level = nxt
    return list(level)


def count(params: dict[str, Any], ballots: list[Ballot]) -> dict[str, Any]:
    options: list[str] = params["options"]
    scores = {o: sum((w for _, w, a in ballots if o in a), Fraction(0)) for o in options}

    def as_list(c: frozenset[str]) -> list[str]:
        return [o for o in options if o in c]

    def position(c: frozenset[str]) -> list[int]:
        return sorted(options.index(o) for o in c)

    committee: frozenset[str] | None = None
    committees: list[frozenset[str]] = []
    if not any(w > 0 and a for _, w, a in ballots):
        reason = "no_votes"
    else:
        committees = sorted(optimal_committees(params, ballots, scores), key=position)
        reason = "decided"
        if len(committees) == 1:
            committee = committees[0]
        elif not params["resolute"] or params["tie_break"] == "none":
            reason = "tie"
        elif params["tie_break"] == "option_order":
            committee = committees[0]
        else:
            voters = sorted((b for b in ballots if b[2]), key=lambda b: (-b[1], b[0]))
            chair = voters[0][2]
            committee = max(committees, key=lambda c: len(c & chair))  # first on equal
    out: dict[str, Any] = {
        "committee": None if committee is None else as_list(committee),
        "decided": committee is not None, "reason": reason, "rule": params["rule"],
        "seats": params["seats"],
        "scores": {o: float(v) for o, v in scores.items()},
        "pav_score": None if committee is None else float(pav_score(committee, ballots)),
    }
    if not params["resolute"]:
        out["committees"] = [as_list(c) for c in committees]
    return out


class ApprovalVote(OneRound):
    """Approval ballots, one winner or a committee: approval, PAV or sequential PAV."""

    name = "approval_vote"
    summary = ("approval voting for a winner or a committee of k seats: plain approval, "
               "proportional (PAV) or sequential PAV; weights, (ir)resolute outcomes")
    kind = "ballot"
    PARAMS = {"options", "seats", "rule", "resolute", "tie_break", "weights", "weight_key",
              "write"}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, self.PARAMS)
        opts = check_options(params)
        p = dict(params)
        k = p.setdefault("seats", 1)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(opts):
            raise ProtocolError(f"seats must be an integer from 1 to {len(opts)} (the options)")
        p["rule"] = choice(params, "rule", "approval", APPROVAL_RULES)
        if not isinstance(p.setdefault("resolute", True), bool):
            raise ProtocolError("resolute must be true or false")
        p["tie_break"] = choice(params, "tie_break", "option_order",
                                ("option_order", "chair", "none"))
        p["write"] = write_mode(params)
        p["weights"] = check_weights(params)
        if p["rule"] == "pav" and math.comb(len(opts), k) > MAX_COMMITTEES:
            raise ProtocolError(
                f"pav would enumerate {math.comb(len(opts), k)} committees (more than "
                f"{MAX_COMMITTEES}); use rule seq_pav")
        return p

    def round_body(self, params: dict[str, Any]) -> Any:
        return {"options": params["options"], "seats": params["seats"]}

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        approved(value, params["options"])

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        if not participants:
            raise ProtocolError("an approval vote needs at least one participant")
        ws = voter_weights(participants, params)
        ballots: list[Ballot] = []
        for r in sorted(responses, key=lambda r: r.agent):
            a = approved(r.value, params["options"])
            if a is not None:
                ballots.append((r.agent, ws.get(r.agent, Fraction(1)), frozenset(a)))
        return count(params, ballots)

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        params = self.decide_params(inputs)
        ps = participants_of(inputs)
        if not ps:
            raise ProtocolError("an approval vote needs at least one participant")
        rs = responses_of(inputs, ps)
        for r in rs.values():
            approved(r.value, params["options"])
        return self.decide_typed(params, ps, by_arrival(rs))

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        return vote_writes(session, result, "committee")


PROTOCOLS: list[Protocol] = [ApprovalVote()]
