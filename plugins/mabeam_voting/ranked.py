"""`ranked_vote`: ranked-choice voting (Borda, Copeland, Schulze, IRV, Condorcet). Pure counting.

A ballot is a strict order over a subset of the options; the options it leaves out are tied
below every option it ranks. Weights are exact (fractions.Fraction); the outcome reports
them as floats.

    borda     an option ranked at position i (0-based) of m options gets m-1-i points times
              the voter's weight; unranked options get 0
    pairwise  d[x][y] = the weight of the voters preferring x to y (x ranked above y, or x
              ranked and y not)
    copeland  pairwise wins minus pairwise losses (a pairwise tie counts 0)
    schulze   strongest (widest) paths over the links d[x][y] > d[y][x]; the winners are the
              options whose path to every other is at least as strong as the way back;
              score = how many options it beats by path
    irv       rounds: each non-exhausted ballot counts for its first remaining option; an
              option with more than half of the non-exhausted weight wins; else the option
              with the fewest first preferences is eliminated (ties: the one with fewer in the
              previous round, recursively back to round 1, then the later one in `options`).
              A round where every remaining option has the same tally is a tie among them.
    condorcet the Condorcet winner (beats every other pairwise) when there is one, else the
              `completion` method (copeland or schulze)

A tie among top options is settled by `tie_break`: `none` (no decision, reason `tie`),
`option_order` (the first tied option in `options`) or `chair` (of the voters ranking a tied
option, the heaviest, ties by lowest agent id; its most-preferred tied option wins).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

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

METHODS = ("borda", "copeland", "schulze", "irv", "condorcet")
TIE_BREAKS = ("none", "option_order", "chair")

Ballot = tuple[str, Fraction, list[str]]  # agent, weight, ranking


def check_options(params: dict[str, Any]) -> list[str]:
    opts = params.get("options")
    if not isinstance(opts, list) or not opts or not all(isinstance(o, str) for o in opts):
        raise ProtocolError("params.options must be a non-empty list of strings")
    if len(set(opts)) != len(opts):
        raise ProtocolError("params.options must be distinct")
    return opts


def check_weights(params: dict[str, Any]) -> dict[str, Any]:
    ws = params.get("weights", {})
    if not isinstance(ws, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            and v >= 0 for k, v in ws.items()):
        raise ProtocolError("weights must map agent ids to numbers >= 0")
    key = params.get("weight_key")
    if key is not None and not isinstance(key, str):
        raise ProtocolError("weight_key must be a metadata key (string)")
    return ws


def voter_weights(participants: list[Participant], params: dict[str, Any],
                  ) -> dict[str, Fraction]:
    """Each participant's weight, as weighted_vote's: params.weights[id] if given, else
    metadata[weight_key] (when given and a number >= 0), else the weight it registered with
    (hello `weight`, default 1)."""
    ws, key = params["weights"], params.get("weight_key")
    out = {}
    for p in participants:
        w: Any = ws.get(p.id)
        if w is None and key is not None:
            m = p.metadata.get(key)
            if isinstance(m, (int, float)) and not isinstance(m, bool) and m >= 0:
                w = m
        out[p.id] = Fraction(str(p.weight if w is None else w))
    return out


def ranking(value: Any, options: list[str]) -> list[str] | None:
    """The ranking a ballot gives, or None for an abstention; raises for anything else."""
    if isinstance(value, dict) and set(value) == {"abstain"} and value["abstain"] is True:
        return None
    if not isinstance(value, dict) or set(value) != {"ranking"} or not isinstance(
            value["ranking"], list) or not value["ranking"]:
        raise ProtocolError('a ballot is {"ranking": [OPTION, ...]} (non-empty) or '
                            '{"abstain": true}')
    r = value["ranking"]
    for o in r:
        if not isinstance(o, str) or o not in options:
            raise ProtocolError(f"{o!r} is not one of the options {options!r}")
    if len(set(r)) != len(r):
        raise ProtocolError("a ranking must not repeat an option")
    return list(r)


def _by_weight(ballots: list[Ballot]) -> dict[Fraction, list[list[str]]]:
    groups: dict[Fraction, list[list[str]]] = {}
    for _, w, r in ballots:
        groups.setdefault(w, []).append(r)
    return groups


def pairwise(options: list[str], ballots: list[Ballot]) -> dict[str, dict[str, Fraction]]:
    """Counted in integers per weight class, then scaled: exact, and fast."""
    m = len(options)
    idx = {o: i for i, o in enumerate(options)}
    d = {x: {y: Fraction(0) for y in options if y != x} for x in options}
    for w, rs in _by_weight(ballots).items():
        c = [[0] * m for _ in range(m)]
        for r in rs:
            ranked = [idx[o] for o in r]
            rest = [i for i in range(m) if i not in set(ranked)]
            for a, i in enumerate(ranked):
                row = c[i]
                for j in ranked[a + 1:]:
                    row[j] += 1
                for j in rest:
                    row[j] += 1
        for i, ox in enumerate(options):
            for j, oy in enumerate(options):
                if c[i][j]:
                    d[ox][oy] += w * c[i][j]
    return d


def borda(options: list[str], ballots: list[Ballot]) -> dict[str, Fraction]:
    m = len(options)
    s = {o: Fraction(0) for o in options}
    for w, rs in _by_weight(ballots).items():
        points = dict.fromkeys(options, 0)
        for r in rs:
            for i, o in enumerate(r):
                points[o] += m - 1 - i
        for o, v in points.items():
            s[o] += w * v
    return s


def copeland(options: list[str], d: dict[str, dict[str, Fraction]]) -> dict[str, Fraction]:
    return {x: Fraction(sum((d[x][y] > d[y][x]) - (d[x][y] < d[y][x])
                            for y in options if y != x)) for x in options}


def schulze_paths(options: list[str],
                  d: dict[str, dict[str, Fraction]]) -> dict[str, dict[str, Fraction]]:
    p = {x: {y: (d[x][y] if d[x][y] > d[y][x] else Fraction(0)) for y in options if y != x}
         for x in options}
    for k in options:
        for i in options:
            if i == k:
                continue
            for j in options:
                if j not in (i, k):
                    p[i][j] = max(p[i][j], min(p[i][k], p[k][j]))
    return p


def schulze(options: list[str], d: dict[str, dict[str, Fraction]]) -> dict[str, Fraction]:
    """Score = options beaten by strongest path; the winners beat-or-tie every other."""
    p = schulze_paths(options, d)
    return {x: Fraction(sum(p[x][y] > p[y][x] for y in options if y != x)) for x in options}


def schulze_winners(options: list[str], d: dict[str, dict[str, Fraction]]) -> list[str]:
    p = schulze_paths(options, d)
    return [x for x in options if all(p[x][y] >= p[y][x] for y in options if y != x)]


def condorcet_winner(options: list[str], d: dict[str, dict[str, Fraction]]) -> str | None:
    for x in options:
        if all(d[x][y] > d[y][x] for y in options if y != x):
            return x
    return None


def irv(options: list[str], ballots: list[Ballot]
        ) -> tuple[list[str], list[dict[str, Any]], list[str], dict[str, Fraction]]:
    """(winners: one, or the options tied in the deciding round; rounds; elimination order;
    the last round's tallies)."""
    remaining = list(options)
    history: list[dict[str, Fraction]] = []
    rounds: list[dict[str, Any]] = []
    eliminated: list[str] = []
    while True:
        t = {o: Fraction(0) for o in remaining}
        for _, w, r in ballots:
            first = next((o for o in r if o in t), None)
            if first is not None:
                t[first] += w
        history.append(t)
        total = sum(t.values(), Fraction(0))
        entry: dict[str, Any] = {"tallies": {o: float(v) for o, v in t.items()},
                                 "eliminated": None}
        rounds.append(entry)
        top = [o for o in remaining if t[o] * 2 > total]
        if top:
            return top, rounds, eliminated, t
        if len(remaining) == 1 or len(set(t.values())) == 1:
            return list(remaining), rounds, eliminated, t

        def key(o: str) -> tuple[Any, ...]:
            # fewest now, then fewest in the previous rounds back to round 1, then the later
            # in options order goes first
            return (tuple(h[o] for h in reversed(history)), -options.index(o))

        loser = min(remaining, key=key)
        entry["eliminated"] = loser
        eliminated.append(loser)
        remaining.remove(loser)


def chair_pick(tied: list[str], ballots: list[Ballot]) -> str | None:
    best: tuple[Fraction, str, str] | None = None
    for agent, w, r in ballots:
        fav = next((o for o in r if o in tied), None)
        if fav is None:
            continue
        if best is None or w > best[0] or (w == best[0] and agent < best[1]):
            best = (w, agent, fav)
    return None if best is None else best[2]


def count(params: dict[str, Any], ballots: list[Ballot]) -> dict[str, Any]:
    options: list[str] = params["options"]
    method: str = params["method"]
    d = pairwise(options, ballots)
    cw = condorcet_winner(options, d)
    rounds: list[dict[str, Any]] = []
    scores: dict[str, Fraction] = {}
    if method == "borda":
        scores = borda(options, ballots)
    elif method == "copeland" or (method == "condorcet" and params["completion"] == "copeland"):
        scores = copeland(options, d)
    elif method in ("schulze", "condorcet"):
        scores = schulze(options, d)
    if method == "irv":
        top, rounds, gone, last = irv(options, ballots)
        alive = sorted(last, key=lambda o: (-last[o], options.index(o)))
        order = alive + list(reversed(gone))
        scores = {o: last.get(o, Fraction(0)) for o in options}
    else:
        order = sorted(options, key=lambda o: (-scores[o], options.index(o)))
        if method == "schulze" or (method == "condorcet" and params["completion"] == "schulze"):
            top = schulze_winners(options, d)
        else:
            best = max(scores.values())
            top = [o for o in options if scores[o] == best]
        if method == "condorcet" and cw is not None:
            top = [cw]
    decision: str | None = None
    ties: list[str] = []
    if not any(w > 0 for _, w, _ in ballots):
        reason, rounds = "no_votes", []
    elif len(top) == 1:
        decision, reason = top[0], "decided"
    else:
        ties = sorted(top, key=options.index)
        tb = params["tie_break"]
        pick = ties[0] if tb == "option_order" else (
            chair_pick(ties, ballots) if tb == "chair" else None)
        if pick is None:
            reason = "tie"
        else:
            decision, reason = pick, "decided"
    return {
        "decision": decision, "decided": decision is not None, "reason": reason,
        "method": method,
        "scores": {o: float(scores[o]) for o in options},
        "pairwise": {x: {y: float(v) for y, v in row.items()} for x, row in d.items()},
        "condorcet_winner": cw, "rounds": rounds, "ranking": order, "ties": ties,
    }


class RankedVote(OneRound):
    """Ranked ballots counted by Borda, Copeland, Schulze, IRV or Condorcet."""

    name = "ranked_vote"
    summary = ("ranked-choice voting: borda, copeland, schulze, irv (instant runoff) or "
               "condorcet with a completion; weights, documented tie-breaks")
    kind = "ballot"
    PARAMS = {"options", "method", "completion", "weights", "weight_key", "tie_break", "write"}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, self.PARAMS)
        check_options(params)
        p = dict(params)
        p["method"] = choice(params, "method", "borda", METHODS)
        p["completion"] = choice(params, "completion", "copeland", ("copeland", "schulze"))
        p["tie_break"] = choice(params, "tie_break", "none", TIE_BREAKS)
        p["write"] = write_mode(params)
        p["weights"] = check_weights(params)
        return p

    def round_body(self, params: dict[str, Any]) -> Any:
        return {"options": params["options"], "method": params["method"]}

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        ranking(value, params["options"])

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        if not participants:
            raise ProtocolError("a ranked vote needs at least one participant")
        ws = voter_weights(participants, params)
        ballots: list[Ballot] = []
        for r in sorted(responses, key=lambda r: r.agent):
            rk = ranking(r.value, params["options"])
            if rk is not None:
                ballots.append((r.agent, ws.get(r.agent, Fraction(1)), rk))
        return count(params, ballots)

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        params = self.decide_params(inputs)
        ps = participants_of(inputs)
        if not ps:
            raise ProtocolError("a ranked vote needs at least one participant")
        rs = responses_of(inputs, ps)
        for r in rs.values():
            ranking(r.value, params["options"])
        return self.decide_typed(params, ps, by_arrival(rs))

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        return vote_writes(session, result, "decision")


PROTOCOLS: list[Protocol] = [RankedVote()]
