"""The arbiter's side of the audit log: which of its services report what, in which shape.

The arbiter is the log's only writer (observe/audit.py says why). Control changes are
recorded by the control server itself (control/server.py); everything else arrives here:
ended sessions from the session service, forbidden writes from the variable service (the
arbiter's admission) and from workers (an `audit` link message: the shard's own refusals
and its shard endpoint's), refused CURVE handshakes from the ZAP handler, agent-id
takeovers from the agent service. None of these are on a request's success path.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mabeamd.net.wire import ErrorCode, WireError

if TYPE_CHECKING:
    from mabeamd.observe.audit import AuditLog

# A refused CURVE client retries its handshake every reconnect interval (100 ms by
# default), and anyone can make one: so one record per (key, address) per window, the next
# one saying how many it stood for. Without it an unauthenticated peer could fill the log
# and rotate the real records out of it.
AUTH_FAILURE_WINDOW = 60.0
AUTH_FAILURE_KEYS = 4096  # (key, address) pairs remembered; past that the oldest go

# What a session's audit record keeps: its identity and terms, everything its mechanism was
# given (engine.py _audit adds participants in full, transcript, inputs) and what came of
# it (result, writes, their new versions).
SESSION_FIELDS = ("session", "protocol", "initiator", "state", "reason", "shard",
                  "variables", "params", "participants", "absent", "transcript", "inputs",
                  "result", "writes", "versions", "created_at", "elapsed")


class AuditReports:
    """The reports each service is given at construction (its on_... callbacks), as records
    of the one audit log."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        # (key, address) -> [when its last record was written, failures since then]
        self._auth_failures: dict[tuple[str, str], list[float]] = {}

    def session(self, record: dict[str, Any]) -> None:
        self.audit.submit("session", {k: record.get(k) for k in SESSION_FIELDS})

    def gate(self) -> None:
        """Session starts are refused while the log is known to fail (on_failure refuse):
        their outcome would go unrecorded. Only a flag: starts must not wait on a disk."""
        if self.audit.refusing:
            raise WireError(ErrorCode.STORAGE_ERROR, "audit log unavailable ([audit] "
                            f"on_failure = refuse): {self.audit.failing}",
                            details={"reason": "audit_unavailable"})

    def forbidden(self, op: str, agent: Any, name: Any, reason: str) -> None:
        self.audit.submit("forbidden", {"op": op, "agent": agent, "name": name,
                                        "reason": reason, "via": "agent_endpoint"})

    def worker_refusals(self, index: int, body: dict[str, Any]) -> None:
        """A worker's `audit` message: the forbidden writes of one of its batches."""
        for rec in body.get("records") or ():
            if isinstance(rec, dict):
                self.audit.submit("forbidden", {**rec, "shard": index})

    def takeover(self, agent: str, principal: str | None) -> None:
        self.audit.submit("takeover", {"agent": agent, "principal": principal,
                                       "proof": "key" if principal else "token"})

    def auth_failure(self, key: str, address: str, reason: str) -> None:
        now = time.monotonic()
        seen = self._auth_failures.get((key, address))
        if seen is not None and now - seen[0] < AUTH_FAILURE_WINDOW:
            seen[1] += 1
            return
        repeats = int(seen[1]) if seen is not None else 0
        self._auth_failures.pop((key, address), None)
        if len(self._auth_failures) >= AUTH_FAILURE_KEYS:
            del self._auth_failures[next(iter(self._auth_failures))]
        self._auth_failures[(key, address)] = [now, 0]
        self.audit.submit("auth_failure", {"mechanism": "CURVE", "key": key,
                                           "address": address, "reason": reason,
                                           "repeats": repeats})
