"""Counting votes: the one rule book behind `vote` and `weighted_vote`. Pure.

Arithmetic is exact (fractions.Fraction over the given weights and thresholds), so whether an
option reaches a threshold never depends on float rounding; weights in the outcome are
reported as floats.

    eligible   every participant's weight
    present    participants who answered (a vote or an explicit abstention)
    votes      participants who voted for an option

1. Quorum: `quorum` is a fraction of the eligible weight; `quorum_counts` says whether
   abstentions count towards it (`present`, the default) or only votes (`votes`). Missed ->
   no decision, reason `no_quorum`.
2. Threshold over `base` (votes | present | eligible): `majority` needs more than half
   (`comparison` strict, the default) or at least half (`at_least`); `supermajority` the
   same against `fraction` (default 2/3, at least); `unanimous` every unit of the base;
   `plurality` just the most votes. An option qualifies only with a weight above zero.
3. Of the qualifying options the heaviest wins; several equally heavy ones are a tie,
   settled by `tie_break`: `none` (no decision, reason `tie`, the default),
   `option_order` (the first in `options`) or `chair` (of the voters who voted for one of
   the tied options, the one with the highest weight, equal weights: the lowest agent id;
   its option wins).
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from mabeamd import protocol
from mabeamd.protocol import ProtocolError, Session

WRITES = ("decision", "outcome", "none")


def write_mode(params: dict[str, Any]) -> str:
    """The `write` param every voting protocol takes: what a decided vote writes."""
    return protocol.choice(params, "write", "decision", WRITES)


def vote_writes(session: Session, result: dict[str, Any], decision: str) -> dict[str, Any]:
    """`write`: decision (the outcome's `decision` key -- the option, or the committee --
    into every variable, only when decided), outcome (the whole outcome, decided or not) or
    none."""
    mode = session.params["write"]
    if mode == "none" or (mode == "decision" and not result["decided"]):
        return {}
    value = result[decision] if mode == "decision" else result
    return {name: value for name in session.variables}

RULES = ("majority", "supermajority", "unanimous", "plurality")
BASES = ("votes", "present", "eligible")


def ratio(value: Any, key: str) -> Fraction:
    """A fraction in [0, 1] given as a number or as a "p/q" string (e.g. "2/3", exact)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        f = Fraction(value) if isinstance(value, str) else Fraction(str(value))
    except (TypeError, ValueError, ZeroDivisionError):
        raise ProtocolError(f"{key} must be a number or a 'p/q' string in [0, 1]") from None
    if not 0 <= f <= 1:
        raise ProtocolError(f"{key} must be within [0, 1]")
    return f


def ballot(value: Any, options: list[Any]) -> Any | None:
    """The option voted for, or None for an abstention; raises for anything else."""
    if isinstance(value, dict) and set(value) == {"abstain"} and value["abstain"] is True:
        return None
    if not isinstance(value, dict) or set(value) != {"vote"}:
        raise ProtocolError('a ballot is {"vote": OPTION} or {"abstain": true}')
    if value["vote"] not in options:
        raise ProtocolError(f"{value['vote']!r} is not one of the options {options!r}")
    return value["vote"]


def count(params: dict[str, Any], weights: dict[str, Fraction],
          ballots: Iterable[tuple[str, Any | None]]) -> dict[str, Any]:
    """`ballots`: (participant, the option it voted for or None for an abstention), one per
    participant who answered, each checked by ballot()."""
    options: list[Any] = params["options"]
    tally: list[Fraction] = [Fraction(0)] * len(options)
    present = Fraction(0)
    cast: list[tuple[str, Any]] = []
    for agent, choice in ballots:
        present += weights[agent]
        if choice is not None:
            tally[options.index(choice)] += weights[agent]
            cast.append((agent, choice))
    eligible = sum(weights.values(), Fraction(0))
    votes = sum(tally, Fraction(0))
    base = {"votes": votes, "present": present, "eligible": eligible}[params["base"]]
    quorum_have = present if params["quorum_counts"] == "present" else votes
    quorum_met = quorum_have >= ratio(params["quorum"], "quorum") * eligible
    rule = params["rule"]
    strict = params["comparison"] == "strict"
    need = {"majority": base / 2, "unanimous": base, "plurality": Fraction(0),
            "supermajority": base * ratio(params["fraction"], "fraction")}[rule]
    if rule == "unanimous":
        strict = False

    def qualifies(w: Fraction) -> bool:
        return w > 0 and (w > need if strict else w >= need)

    decision: Any = None
    if not quorum_met:
        reason = "no_quorum"
    elif votes == 0:
        reason = "no_votes"
    else:
        candidates = [i for i, w in enumerate(tally) if qualifies(w)]
        top = max((tally[i] for i in candidates), default=Fraction(0))
        best = [i for i in candidates if tally[i] == top]
        if not best:
            reason = "threshold_not_met"
        elif len(best) == 1 or params["tie_break"] == "option_order":
            decision, reason = options[best[0]], "decided"
        elif params["tie_break"] == "chair":
            tied = [options[i] for i in best]
            _, decision = min(((-weights[a], a), c) for a, c in cast if c in tied)
            reason = "decided"
        else:
            reason = "tie"
    return {
        "decision": decision, "decided": reason == "decided", "reason": reason,
        "tally": [{"option": o, "weight": float(w)} for o, w in zip(options, tally,
                                                                     strict=True)],
        "eligible": float(eligible), "present": float(present), "votes": float(votes),
        "quorum_met": quorum_met, "needed": float(need),
        "comparison": "at_least" if not strict else "strict",
    }
