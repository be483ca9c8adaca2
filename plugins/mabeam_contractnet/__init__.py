"""Built-in plugin `contract_net`: resource negotiation after FIPA's (iterated) contract net.

Round `cfp`: every participant gets the call for proposals (the task) and answers
{"propose": {FIELD: number, ...}} or {"refuse": REASON}. The pure mechanism ranks the
proposals that meet the constraints by score (lower is better), then earliest proposal,
then agent id, and awards the best `award` of them. With `confirm` (the default) each awardee
gets an `award` round and must answer {"accept": true}; one that declines or stays silent is
replaced by the next in the ranking. Losers get a `reject` notice, winners `confirmed`. With
`rounds` > 1, a round that awards nobody is followed by a fresh call for proposals.
"""

from __future__ import annotations

import math
from operator import attrgetter
from typing import Any

from mabeamd.hookspecs import hookimpl
from mabeamd.protocol import (
    Outcome,
    Participant,
    Protocol,
    ProtocolError,
    Response,
    Session,
    by_arrival,
    integer,
    only,
    participants_of,
    responses_of,
)

PARAMS = {"task", "score", "constraints", "award", "rounds", "confirm"}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class ContractNet(Protocol):
    name = "contract_net"
    summary = ("resource negotiation (FIPA contract net): call for proposals, award by a "
               "scoring rule under constraints, accept/reject, optional iterated rounds")
    default_deadline = 30.0

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, PARAMS)
        p = dict(params)
        p.setdefault("task", None)
        score = p.setdefault("score", {"cost": 1})
        if not isinstance(score, dict) or not score or not all(
                isinstance(k, str) and _finite(v) for k, v in score.items()):
            raise ProtocolError("score must map proposal fields to numeric weights; a "
                                "proposal's score is the weighted sum, lower wins")
        cons = p.setdefault("constraints", {})
        if not isinstance(cons, dict):
            raise ProtocolError("constraints must map fields to {min, max}")
        for f, c in cons.items():
            if not isinstance(c, dict) or not c or set(c) - {"min", "max"} or not all(
                    _finite(v) for v in c.values()):
                raise ProtocolError(f"constraints.{f} must be {{min: N, max: N}} (either)")
        p["award"] = integer(p, "award", 1, lo=1, hi=10000)
        p["rounds"] = integer(p, "rounds", 1, lo=1, hi=100)
        confirm = p.setdefault("confirm", True)
        if not isinstance(confirm, bool):
            raise ProtocolError("confirm must be true or false")
        return p

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        if kind == "award":
            if not isinstance(value, dict) or not isinstance(value.get("accept"), bool):
                raise ProtocolError('answer an award with {"accept": true|false}')
            return
        if isinstance(value, dict) and set(value) == {"refuse"}:
            return
        if not isinstance(value, dict) or set(value) != {"propose"} or \
                not isinstance(value["propose"], dict):
            raise ProtocolError('answer a call for proposals with {"propose": {FIELD: '
                                'NUMBER, ...}} or {"refuse": REASON}')
        prop = value["propose"]
        for f in set(params["score"]) | set(params["constraints"]):
            if not _finite(prop.get(f)):
                raise ProtocolError(f"proposal field {f!r} must be a finite number (it is "
                                    "scored or constrained)")

    # --- the pure mechanism ----------------------------------------------------------------

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        """One call for proposals on what the session holds: `params` as check_params
        returned them, at most one `cfp` answer per participant, each checked at arrival,
        in arrival order (as OneRound.decide_typed)."""
        ranked, ineligible, refused = [], [], []
        for r in sorted(responses, key=attrgetter("agent")):
            agent = r.agent
            if "refuse" in r.value:  # checked at arrival: {"refuse": ...} or {"propose": {...}}
                refused.append(agent)
                continue
            prop = r.value["propose"]
            broken = [f"{f} {k} {lim}" for f, c in sorted(params["constraints"].items())
                      for k, lim in sorted(c.items())
                      if (k == "min" and prop[f] < lim) or (k == "max" and prop[f] > lim)]
            if broken:
                ineligible.append({"agent": agent, "violates": broken})
                continue
            score = sum(w * prop[f] for f, w in sorted(params["score"].items()))
            ranked.append({"agent": agent, "proposal": prop, "score": score, "seq": r.seq})
        ranked.sort(key=lambda e: (e["score"], e["seq"], e["agent"]))
        public = [{k: e[k] for k in ("agent", "proposal", "score")} for e in ranked]
        answered = {r.agent for r in responses}
        return {
            "task": params["task"],
            "awarded": public[: params["award"]],
            "ranking": public,
            "rejected": [e["agent"] for e in public[params["award"]:]],
            "ineligible": ineligible, "refused": refused,
            "missing": sorted(p.id for p in participants if p.id not in answered),
        }

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        params = self.decide_params(inputs)
        ps = participants_of(inputs)
        rs = responses_of(inputs, ps)
        for _, r in sorted(rs.items()):
            self.check_response("cfp", r.value, params)
        return self.decide_typed(params, ps, by_arrival(rs))

    def audit_inputs(self, params: dict[str, Any], participants: list[Participant],
                     transcript: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The last call for proposals' answers (the award was decided on them); None once
        awards were offered for confirmation (decide() does not take those answers)."""
        cfps = [r for r in transcript if r.get("kind") == "cfp"]
        if not cfps or len(cfps) != len(transcript):
            return None
        return {"params": params, "participants": [p.to_dict() for p in participants],
                "responses": list(cfps[-1].get("answers", []))}

    # --- the driver ------------------------------------------------------------------------

    async def run(self, session: Session) -> Outcome:
        params = session.params
        everyone = [p.id for p in session.participants]
        result: dict[str, Any] = {}
        for round_no in range(1, params["rounds"] + 1):
            answers = await session.ask(everyone, "cfp", {"task": params["task"],
                                                          "round": round_no})
            result = self.decide_typed(params, session.participants, list(answers.values()))
            result["cfp_round"] = round_no
            if params["confirm"] and result["ranking"]:
                result = await self._confirm(session, result)
            if result["awarded"]:
                break
        winners = [a["agent"] for a in result["awarded"]]
        losers = [e["agent"] for e in result.get("ranking", []) if e["agent"] not in winners]
        session.tell(losers, "reject", {"task": params["task"]})
        session.tell(winners, "confirmed", {"task": params["task"]})
        writes = ({name: {"task": params["task"], "awarded": result["awarded"]}
                   for name in session.variables} if result["awarded"] else {})
        return Outcome(result, writes)

    async def _confirm(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        """Offer awards down the ranking until `award` contractors accepted or it runs out."""
        want = session.params["award"]
        queue = list(result["ranking"])
        confirmed: list[dict[str, Any]] = []
        declined: list[str] = []
        while queue and len(confirmed) < want:
            offer, queue = queue[: want - len(confirmed)], queue[want - len(confirmed):]
            answers = await session.ask([e["agent"] for e in offer], "award",
                                        {"task": session.params["task"]})
            for e in offer:
                r = answers.get(e["agent"])
                if r is not None and r.value["accept"]:
                    confirmed.append(e)
                else:
                    declined.append(e["agent"])
        done = {e["agent"] for e in confirmed} | set(declined)
        result["awarded"] = confirmed
        result["declined"] = declined
        result["rejected"] = [e["agent"] for e in result["ranking"] if e["agent"] not in done]
        return result


PROTOCOLS: list[Protocol] = [ContractNet()]


@hookimpl
def mabeamd_protocols() -> list[Protocol]:
    return PROTOCOLS
