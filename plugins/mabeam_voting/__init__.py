"""Built-in plugin `voting`: simple consensus, voting over options, weighted voting, ranked
voting (ranked.py), approval voting for a winner or a committee (approval.py).

See docs/protocols.md for each protocol's params, inputs and outcome.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from mabeam_voting.approval import ApprovalVote
from mabeam_voting.ranked import RankedVote
from mabeam_voting.tally import BASES, RULES, ballot, count, ratio, vote_writes, write_mode
from mabeamd.hookspecs import hookimpl
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


def _writes_param(params: dict[str, Any]) -> dict[str, Any] | None:
    w = params.get("writes")
    if w is not None and (not isinstance(w, dict) or not all(isinstance(k, str) for k in w)):
        raise ProtocolError("writes must be a map of variable name -> value")
    return w


def _someone(participants: list[Participant], what: str) -> list[Participant]:
    if not participants:
        raise ProtocolError(f"{what} needs at least one participant")
    return participants


class Consensus(OneRound):
    """Every participant must accept the proposal before the deadline."""

    name = "consensus"
    summary = "simple consensus: passes only if every participant accepts before the deadline"
    kind = "proposal"

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, {"proposal", "writes"})
        if "proposal" not in params:
            raise ProtocolError("params.proposal is required (the value agents accept)")
        _writes_param(params)
        return dict(params)

    def round_body(self, params: dict[str, Any]) -> Any:
        return {"proposal": params["proposal"]}

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("accept"), bool):
            raise ProtocolError('answer {"accept": true} or {"accept": false} (plus an '
                                'optional "reason")')

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        _someone(participants, "consensus")
        rs = {r.agent: r for r in responses}
        accepted: list[str] = []
        rejected: list[str] = []
        missing: list[str] = []
        for p in sorted(participants, key=lambda p: p.id):
            r = rs.get(p.id)
            if r is None:
                missing.append(p.id)
            else:
                (accepted if r.value["accept"] else rejected).append(p.id)
        return {"passed": not rejected and not missing, "accepted": accepted,
                "rejected": rejected, "missing": missing}

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        params = self.decide_params(inputs)
        ps = _someone(participants_of(inputs), "consensus")
        rs = responses_of(inputs, ps)
        for r in rs.values():
            self.check_response(self.kind, r.value, params)
        return self.decide_typed(params, ps, by_arrival(rs))

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        if not result["passed"]:
            return {}
        explicit = _writes_param(session.params)
        if explicit is not None:
            return dict(explicit)
        return {name: session.params["proposal"] for name in session.variables}


class Vote(OneRound):
    """Voting over options with majority/supermajority/unanimity/plurality rules."""

    name = "vote"
    summary = ("voting over options: majority, supermajority, unanimous or plurality; quorum, "
               "abstentions, strict or at-least thresholds, documented tie-break")
    kind = "ballot"
    weighted = False
    PARAMS = {"options", "rule", "fraction", "comparison", "base", "quorum", "quorum_counts",
              "tie_break", "write"}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, self.PARAMS | ({"weights", "weight_key"} if self.weighted else set()))
        opts = params.get("options")
        if not isinstance(opts, list) or not opts:
            raise ProtocolError("params.options must be a non-empty list")
        if any(opts.count(o) > 1 for o in opts):
            raise ProtocolError("params.options must be distinct")
        p = dict(params)
        p["rule"] = choice(params, "rule", "majority", RULES)
        p["comparison"] = choice(params, "comparison",
                                 "at_least" if p["rule"] == "supermajority" else "strict",
                                 ("strict", "at_least"))
        p["base"] = choice(params, "base", "votes", BASES)
        p["quorum_counts"] = choice(params, "quorum_counts", "present", ("present", "votes"))
        p["tie_break"] = choice(params, "tie_break", "none", ("none", "option_order", "chair"))
        p.setdefault("fraction", "2/3")
        p.setdefault("quorum", 0)
        ratio(p["fraction"], "fraction")
        ratio(p["quorum"], "quorum")
        p["write"] = write_mode(params)
        if self.weighted:
            ws = p.setdefault("weights", {})
            if not isinstance(ws, dict) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                    for v in ws.values()):
                raise ProtocolError("weights must map agent ids to numbers >= 0")
            key = p.setdefault("weight_key", None)
            if key is not None and not isinstance(key, str):
                raise ProtocolError("weight_key must be a metadata key (string)")
        return p

    def round_body(self, params: dict[str, Any]) -> Any:
        return {"options": params["options"]}

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        ballot(value, params["options"])

    def weight_of(self, p: Participant, params: dict[str, Any]) -> Fraction:
        """Unweighted: 1 each. Weighted: params.weights[id], else metadata[weight_key] (when
        given and a number >= 0), else the weight the agent registered with."""
        if not self.weighted:
            return Fraction(1)
        w: Any = params["weights"].get(p.id)
        key = params.get("weight_key")
        if w is None and key is not None:
            m = p.metadata.get(key)
            if isinstance(m, (int, float)) and not isinstance(m, bool) and m >= 0:
                w = m
        return Fraction(str(p.weight if w is None else w))

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        weights = {p.id: self.weight_of(p, params) for p in _someone(participants, "a vote")}
        # Every value passed ballot() at arrival: {"vote": OPTION} or {"abstain": true}.
        return count(params, weights, [(r.agent, r.value.get("vote")) for r in responses])

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        params = self.decide_params(inputs)
        ps = _someone(participants_of(inputs), "a vote")
        rs = responses_of(inputs, ps)
        for r in rs.values():
            ballot(r.value, params["options"])
        return self.decide_typed(params, ps, by_arrival(rs))

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        return vote_writes(session, result, "decision")


class WeightedVote(Vote):
    name = "weighted_vote"
    summary = ("weighted voting: per-agent weights from params, registry metadata or "
               "registration; weighted threshold and quorum")
    weighted = True


PROTOCOLS: list[Protocol] = [Consensus(), Vote(), WeightedVote(), RankedVote(),
                              ApprovalVote()]


@hookimpl
def mabeamd_protocols() -> list[Protocol]:
    return PROTOCOLS
