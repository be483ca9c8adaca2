"""Built-in plugin `priority`: competing requests for a limited resource.

Round `request`: each participant answers {"request": N} (N >= 0 whole units; 0 or no answer
= needs nothing). `capacity` units are shared out by `strategy`:

    priority      in order of priority (higher first), then earliest request, then agent id;
                  each gets min(request, what is left)
    proportional  everyone gets their request when it all fits; otherwise the largest-remainder
                  method: floor(capacity * request / total requests) each, then the units left
                  over one by one to the largest remainders (ties: priority, earliest request,
                  agent id). Never more than capacity, never more than a request.
    escalation    the requests go to an operator: the session publishes `session.escalated`
                  and waits for `mabeamctl sessions decide ID '{"allocations": {...}}'`

An agent's priority is params.priorities[id] if given, else the priority it registered with.
"""

from __future__ import annotations

from typing import Any

from mabeamd.hookspecs import hookimpl
from mabeamd.protocol import (
    OneRound,
    Outcome,
    Participant,
    Protocol,
    ProtocolError,
    Response,
    Session,
    by_arrival,
    choice,
    integer,
    only,
    participants_of,
    responses_of,
)

STRATEGIES = ("priority", "proportional", "escalation")


def _requests(params: dict[str, Any], participants: list[Participant],
              responses: list[Response]) -> list[dict[str, Any]]:
    """The positive requests (each answer checked by check_request), in tie-break order."""
    rs = {r.agent: r for r in responses}
    prio = params["priorities"]
    out = []
    for p in participants:
        r = rs.get(p.id)
        if r is None:
            continue
        if r.value["request"] > 0:
            out.append({"agent": p.id, "request": r.value["request"],
                        "priority": prio.get(p.id, p.priority), "seq": r.seq})
    # The one order every strategy breaks ties by.
    out.sort(key=lambda q: (-q["priority"], q["seq"], q["agent"]))
    return out


def check_request(value: Any) -> None:
    if not isinstance(value, dict) or set(value) != {"request"} or isinstance(
            value["request"], bool) or not isinstance(value["request"], int) or \
            value["request"] < 0:
        raise ProtocolError('answer {"request": N} with N a whole number of units >= 0')


def by_priority(capacity: int, reqs: list[dict[str, Any]]) -> dict[str, int]:
    left, alloc = capacity, {}
    for q in reqs:
        alloc[q["agent"]] = min(q["request"], left)
        left -= alloc[q["agent"]]
    return alloc


def proportional(capacity: int, reqs: list[dict[str, Any]]) -> dict[str, int]:
    total = sum(q["request"] for q in reqs)
    if total <= capacity:
        return {q["agent"]: q["request"] for q in reqs}
    alloc = {q["agent"]: capacity * q["request"] // total for q in reqs}
    remainder = {q["agent"]: capacity * q["request"] % total for q in reqs}
    left = capacity - sum(alloc.values())
    # reqs is already in tie-break order and sorted() is stable.
    for q in sorted(reqs, key=lambda q: -remainder[q["agent"]])[:left]:
        alloc[q["agent"]] += 1
    return alloc


def check_decision(decision: Any, capacity: int, reqs: list[dict[str, Any]]) -> dict[str, int]:
    if not isinstance(decision, dict) or set(decision) != {"allocations"} or \
            not isinstance(decision["allocations"], dict):
        raise ProtocolError('a decision is {"allocations": {AGENT: UNITS, ...}}')
    asked = {q["agent"]: q["request"] for q in reqs}
    alloc: dict[str, int] = {}
    for agent, n in decision["allocations"].items():
        if agent not in asked:
            raise ProtocolError(f"{agent!r} requested nothing")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= asked[agent]:
            raise ProtocolError(f"{agent!r}: allocate 0..{asked[agent]} units (its request)")
        alloc[agent] = n
    if sum(alloc.values()) > capacity:
        raise ProtocolError(f"allocations total {sum(alloc.values())}, over the capacity of "
                            f"{capacity}")
    return {q["agent"]: alloc.get(q["agent"], 0) for q in reqs}


class Priority(OneRound):
    name = "priority"
    summary = ("priority and conflict resolution: share a limited resource by priority, "
               "proportionally (largest remainder, never over-allocates) or by escalation "
               "to an operator")
    kind = "request"
    default_deadline = 10.0

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        only(params, {"resource", "capacity", "strategy", "priorities", "decision"})
        p = dict(params)
        p.setdefault("resource", None)
        p["capacity"] = integer(params, "capacity", None, lo=0, hi=2**53)
        p["strategy"] = choice(params, "strategy", "priority", STRATEGIES)
        prio = p.setdefault("priorities", {})
        if not isinstance(prio, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in prio.values()):
            raise ProtocolError("priorities must map agent ids to integers")
        return p

    def round_body(self, params: dict[str, Any]) -> Any:
        return {"resource": params["resource"], "capacity": params["capacity"]}

    def check_response(self, kind: str, value: Any, params: dict[str, Any]) -> None:
        check_request(value)

    def decide(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Escalation offline: with params.decision it is validated and applied, without it
        the outcome is {"escalated": true, ...} and no allocations."""
        params = self.decide_params(inputs)
        ps = participants_of(inputs)
        rs = responses_of(inputs, ps)
        for r in rs.values():
            check_request(r.value)
        return self.decide_typed(params, ps, by_arrival(rs))

    def decide_typed(self, params: dict[str, Any], participants: list[Participant],
                     responses: list[Response]) -> dict[str, Any]:
        reqs = _requests(params, participants, responses)
        cap, strategy = params["capacity"], params["strategy"]
        escalated = False
        if strategy == "priority":
            alloc = by_priority(cap, reqs)
        elif strategy == "proportional":
            alloc = proportional(cap, reqs)
        elif "decision" in params:
            alloc = check_decision(params["decision"], cap, reqs)
        else:
            alloc, escalated = {}, True
        return self._result(params, reqs, alloc, escalated)

    @staticmethod
    def _result(params: dict[str, Any], reqs: list[dict[str, Any]], alloc: dict[str, int],
                escalated: bool) -> dict[str, Any]:
        return {"resource": params["resource"], "capacity": params["capacity"],
                "strategy": params["strategy"], "escalated": escalated,
                "requests": [{k: q[k] for k in ("agent", "request", "priority")}
                             for q in reqs],
                "allocations": alloc, "allocated": sum(alloc.values())}

    async def run(self, session: Session) -> Outcome:
        outcome = await super().run(session)
        result = outcome.result
        if result["escalated"]:
            params = session.params
            reqs = [{**q, "seq": i} for i, q in enumerate(result["requests"])]
            decision = await session.escalate(
                {"resource": params["resource"], "capacity": params["capacity"],
                 "requests": result["requests"]},
                lambda d: check_decision(d, params["capacity"], reqs))
            alloc = check_decision(decision, params["capacity"], reqs)
            result = self._result(params, reqs, alloc, False)
            result["decided_by"] = "operator"
        return Outcome(result, self.writes(session, result))

    def audit_inputs(self, params: dict[str, Any], participants: list[Participant],
                     transcript: list[dict[str, Any]]) -> dict[str, Any] | None:
        """An escalated session is decide() with the operator's decision in params."""
        asks = [r for r in transcript if r.get("kind") != "escalation"]
        decisions = [r["decision"] for r in transcript if r.get("kind") == "escalation"]
        if len(asks) != 1:
            return None
        p = {**params, "decision": decisions[-1]} if decisions else params
        return {"params": p, "participants": [x.to_dict() for x in participants],
                "responses": list(asks[0].get("answers", []))}

    def writes(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        if result["escalated"]:
            return {}
        return {name: result["allocations"] for name in session.variables}

    def check_outcome(self, session: Session, outcome: Outcome) -> None:
        alloc = outcome.result["allocations"]
        if sum(alloc.values()) > session.params["capacity"]:
            raise ProtocolError("allocations exceed the capacity")


PROTOCOLS: list[Protocol] = [Priority()]


@hookimpl
def mabeamd_protocols() -> list[Protocol]:
    return PROTOCOLS
