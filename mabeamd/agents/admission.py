"""Write admission: whether a variable write may go to its shard, and as whom.

A write reaches a shard two ways: relayed by the arbiter from the agent endpoint
(agents/varops.py), or sent by the agent straight to the shard's worker on its shard
endpoint (worker/shard_endpoint.py). Both admit it here, in the same order, so the two
paths cannot drift apart in what they accept or in which error a bad write gets:

1. the op's fields (storage/variables.WRITE_FIELDS, plus the path's proof fields);
2. `agent` names an agent id (it becomes the write's actor);
3. the path's proof that the caller speaks for that agent: on the agent endpoint, the
   agent is registered on the calling connection; on a shard endpoint, the write carries
   the credential the arbiter issued at hello (agents/credentials.py). The proof's fields
   are taken out of the body;
4. the `mabeamd_authorize` hook sees (agent, op, body) -- the body as the agent endpoint
   would see it, without proof fields -- and may refuse;
5. `agent` is taken out: the shard gets the write's fields and the actor apart.

Pure apart from the two callbacks: runs in the arbiter and in workers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from mabeamd.net.wire import ErrorCode, WireError, check_fields
from mabeamd.storage.variables import WRITE_FIELDS

# (actor, op, body) -> a reason to refuse, or None: the mabeamd_authorize hook.
Authorize = Callable[[str, str, dict[str, Any]], str | None]
# (caller, agent, body) -> None; raises WireError when the caller cannot speak for the
# agent. Removes its own proof fields from the body. `caller` is the path's: the agent
# endpoint's connection id, nothing on a shard endpoint.
Vouch = Callable[[Any, str, dict[str, Any]], None]

_REQUIRED = frozenset({"agent", "name"})
# An answer to a session's invitation, sent to the session's worker on its shard endpoint
# (the one-hop path; through the agent endpoint sessions/service.py admits it). Admitted as
# a write is: the credential proves the agent, the authorize hook may refuse.
RESPOND = "session.respond"
RESPOND_FIELDS = frozenset({"agent", "session", "round", "response"})


class WriteAdmission:
    """The admission of one path: its proof fields, its proof, the authorize hook."""

    def __init__(self, vouch: Vouch, authorize: Authorize,
                 proof_fields: Collection[str] = ()) -> None:
        self._vouch = vouch
        self._authorize = authorize
        proof = frozenset(proof_fields)
        # Per op, computed once: admit() runs on every write.
        self._fields = {op: (fields | proof, _REQUIRED | proof)
                        for op, fields in WRITE_FIELDS.items()}
        self._fields[RESPOND] = (RESPOND_FIELDS | proof,
                                 frozenset({"agent", "session", "round"}) | proof)

    def admit(self, op: str, body: dict[str, Any], caller: Any = None,
              ) -> tuple[str, dict[str, Any]]:
        """(actor, the write's fields without `agent`) for a write op (or RESPOND), or
        WireError. The body is not kept; it may be changed (proof fields removed)."""
        allowed, required = self._fields[op]
        check_fields(body, op, allowed, required)
        agent = body["agent"]
        if not isinstance(agent, str):
            raise WireError(ErrorCode.BAD_REQUEST, "agent must be an agent id")
        self._vouch(caller, agent, body)
        reason = self._authorize(agent, op, body)
        if reason is not None:
            raise WireError(ErrorCode.FORBIDDEN, reason)
        del body["agent"]
        return agent, body
