"""Universal variables: the model and the rules, for one shard. Pure: no I/O, no clock.

A variable has a name, a msgpack value, a version (1 at creation, +1 per change), a declared
type, an owner and last modifier, timestamps, an access mode, a conflict policy, constraints
and a bounded history of earlier versions.

Access modes say who may *change* a variable (every agent may read every variable: the
shared-memory read path cannot enforce read rights, so none are promised):
    public        any agent
    restricted    the owner and the agents listed in `writers`
    owner_only    the owner
    coordinated   only a coordination session

Conflict policies say which writes win:
    last_write_wins   every permitted write applies (add expect_version for compare-and-set)
    first_write_wins  writes apply while the value is null; once a non-null value is written,
                      later writes are refused with `conflict` (a claim: first one wins)
    cas_required      every write must carry expect_version
    session           writes go through a coordination session only

Every change returns an *effect*: the variable's new state without its history (or its
deletion). Effects, not requests, go to the write-ahead log, so replay needs no rules and
cannot diverge; applying a put moves the previous version into the bounded history, the same
way live and on replay. (Carrying the history in every effect would copy and log it on every
write.) Snapshots hold the full state, history included.
"""

from __future__ import annotations

import bisect
import math
import re
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any

from mabeamd.net import wire
from mabeamd.net.wire import ErrorCode, WireError, check_fields
from mabeamd.storage.sharding import shard_of

TYPES = ("any", "null", "bool", "int", "float", "str", "bytes", "list", "map")
ACCESS = ("public", "restricted", "owner_only", "coordinated")
POLICIES = ("last_write_wins", "first_write_wins", "cas_required", "session")
NAME_MAX = 256
ADMIN = "@admin"  # the actor of mabeamctl's writes and of a session's writes in its shard
# The variable ops a shard serves for agents, with the fields each takes: the arbiter
# (agents/varops.py) and the worker's shard endpoint check requests against these.
READ_OPS = frozenset({"var.get", "var.history"})
NAMED_OPS = READ_OPS | {"var.create", "var.set", "var.delete"}


def check_shard(name: Any, index: int, shards: int) -> None:
    """Refuse a name another shard owns (`wrong_shard`, with the owner and the count):
    served here, it would live in two shards at once, and a client with a stale shard
    count or a wrong hash would split the state without anyone noticing."""
    if isinstance(name, str):
        owner = shard_of(name, shards)
        if owner != index:
            raise WireError(ErrorCode.WRONG_SHARD, f"{name!r} belongs to shard {owner} of "
                            f"{shards}, not to shard {index}",
                            details={"shard": owner, "shards": shards})


def check_read(op: str, body: dict[str, Any]) -> None:
    """A read's fields: a name, and for var.get an optional `consistent` (true: through etcd
    in cluster mode; on one node every read is already the single writer's)."""
    check_fields(body, op, {"name", "consistent"} if op == "var.get" else {"name"}, {"name"})
    if not isinstance(body.get("consistent", False), bool):
        raise Refused(ErrorCode.BAD_REQUEST, "consistent must be true or false")
WRITE_FIELDS = {
    "var.create": frozenset({"agent", "name", "value", "type", "access", "writers", "policy",
                             "constraints"}),
    "var.set": frozenset({"agent", "name", "value", "expect_version"}),
    "var.delete": frozenset({"agent", "name", "expect_version"}),
}


class Refused(WireError):
    pass


def constraint_violation(message: str) -> Refused:
    return Refused(ErrorCode.CONSTRAINT_VIOLATION, message)


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def packed_size(value: Any) -> int:
    try:
        return len(wire.pack(value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise Refused(ErrorCode.BAD_REQUEST, f"value is not msgpack-serialisable: {exc}") \
            from None


_CONTROL = re.compile(r"[\x00-\x1f]")


def check_name(name: Any) -> str:
    if (not isinstance(name, str) or not 0 < len(name) <= NAME_MAX
            or _CONTROL.search(name) is not None):
        raise Refused(ErrorCode.BAD_REQUEST, f"name must be 1-{NAME_MAX} characters, no control "
                      "characters")
    return name


@dataclass(frozen=True)
class Constraints:
    min: float | None = None
    max: float | None = None
    enum: tuple[Any, ...] | None = None
    max_size: int | None = None

    @staticmethod
    def parse(d: Any) -> Constraints:
        if d is None or d == {}:
            return NO_CONSTRAINTS
        if not isinstance(d, dict) or set(d) - {"min", "max", "enum", "max_size"}:
            raise Refused(ErrorCode.BAD_REQUEST, "constraints is a map of min, max, enum, "
                          "max_size")
        for k in ("min", "max"):
            v = d.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v)):
                raise Refused(ErrorCode.BAD_REQUEST, f"constraints.{k} must be a number")
        enum = d.get("enum")
        if enum is not None and (not isinstance(enum, list) or not enum):
            raise Refused(ErrorCode.BAD_REQUEST, "constraints.enum must be a non-empty list")
        size = d.get("max_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or size < 1):
            raise Refused(ErrorCode.BAD_REQUEST, "constraints.max_size must be an integer >= 1")
        if d.get("min") is None and d.get("max") is None and enum is None and size is None:
            return NO_CONSTRAINTS
        return Constraints(d.get("min"), d.get("max"), tuple(enum) if enum else None, size)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k in ("min", "max", "max_size"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.enum is not None:
            d["enum"] = list(self.enum)
        return d

    def check(self, value: Any, vtype: str, size: int) -> None:
        if vtype != "any" and value is not None and _type_of(value) != vtype and not (
                vtype == "float" and _type_of(value) == "int"):
            raise constraint_violation(f"value of type {_type_of(value)} where {vtype} is "
                                       "declared")
        if self.max_size is not None and size > self.max_size:
            raise constraint_violation(f"value of {size} bytes is over max_size {self.max_size}")
        if self.enum is not None and value not in self.enum:
            raise constraint_violation(f"value {value!r} is not one of {list(self.enum)!r}")
        if self.min is not None or self.max is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                if value is not None:
                    raise constraint_violation("min/max apply to numbers only")
                return
            if self.min is not None and value < self.min:
                raise constraint_violation(f"value {value} is below min {self.min}")
            if self.max is not None and value > self.max:
                raise constraint_violation(f"value {value} is above max {self.max}")


# Shared by every unconstrained variable (most of them): one object, not one per variable.
NO_CONSTRAINTS = Constraints()
History = deque[tuple[int, Any, str, float]]


# slots, a shared empty Constraints, interned actor strings and a history deque made only on
# the first change keep a variable at a few hundred bytes of Python objects: a shard holds
# hundreds of thousands of them (docs/benchmarks.md, the 1,000,000-variables row).
@dataclass(slots=True)
class Variable:
    name: str
    value: Any
    version: int
    type: str
    owner: str
    modified_by: str
    created_at: float
    updated_at: float
    access: str = "public"
    writers: tuple[str, ...] = ()
    policy: str = "last_write_wins"
    constraints: Constraints = NO_CONSTRAINTS
    history: History | tuple[()] = ()  # () until the first change

    def meta(self) -> dict[str, Any]:
        """Everything but value and history: what readers of the shared segment see."""
        return {"type": self.type, "owner": self.owner, "modified_by": self.modified_by,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "access": self.access, "writers": list(self.writers), "policy": self.policy,
                "constraints": self.constraints.to_dict()}

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "version": self.version, **self.meta()}

    def state(self) -> dict[str, Any]:
        """The complete state, as written to the WAL and snapshots."""
        return {**self.public(), "history": [list(h) for h in self.history]}

    @staticmethod
    def from_state(s: dict[str, Any], history_len: int) -> Variable:
        past = s.get("history")
        intern = sys.intern
        return Variable(
            s["name"], s["value"], s["version"], intern(s["type"]), intern(s["owner"]),
            intern(s["modified_by"]), s["created_at"], s["updated_at"], intern(s["access"]),
            tuple(s["writers"]), intern(s["policy"]), Constraints.parse(s["constraints"] or None),
            deque((tuple(h) for h in past), maxlen=history_len) if past else ())


class ShardStore:
    """The variables of one shard and the rules for changing them."""

    def __init__(self, history_len: int = 16, max_value: int = 1 << 20) -> None:
        self.vars: dict[str, Variable] = {}
        # The names in order, for list pages: sorted once after a create or delete, not per
        # page (paging through a million variables must not sort a million names per page).
        self._sorted: list[str] | None = None
        self.history_len = history_len
        self.max_value = max_value

    # --- reads -----------------------------------------------------------------------------

    def get(self, name: Any) -> Variable:
        var = self.vars.get(check_name(name))
        if var is None:
            raise Refused(ErrorCode.NOT_FOUND, f"no variable {name!r}")
        return var

    def history_reply(self, name: Any) -> dict[str, Any]:
        """var.history's answer: the earlier versions, oldest first."""
        var = self.get(name)
        past = [{"version": v, "value": val, "modified_by": by, "updated_at": t}
                for v, val, by, t in var.history]
        return {"name": var.name, "version": var.version, "history": past}

    def list_reply(self, body: dict[str, Any]) -> dict[str, Any]:
        """var.list's answer for one shard (fields checked by the agent endpoint)."""
        page, cursor = self.list_page(body["prefix"], body["after"], body["limit"])
        return {"vars": [v.public() for v in page], "next": cursor}

    def list_page(self, prefix: str = "", after: str = "", limit: int = 100,
             ) -> tuple[list[Variable], str | None]:
        if self._sorted is None:
            self._sorted = sorted(self.vars)
        names = self._sorted
        k = max(bisect.bisect_right(names, after), bisect.bisect_left(names, prefix))
        page: list[Variable] = []
        while k < len(names) and len(page) <= limit and names[k].startswith(prefix):
            page.append(self.vars[names[k]])
            k += 1
        if len(page) > limit:
            return page[:limit], page[limit - 1].name
        return page, None

    # --- changes: each returns the effect to log (and apply) -------------------------------

    def _checked_value(self, value: Any) -> int:
        size = packed_size(value)
        if size > self.max_value:
            raise Refused(ErrorCode.TOO_LARGE, f"value of {size} bytes is over the limit of "
                          f"{self.max_value}")
        return size

    def create(self, name: str, value: Any, actor: str, now: float, *, vtype: str = "any",
               access: str = "public", writers: Any = None,
               policy: str = "last_write_wins", constraints: Any = None) -> dict[str, Any]:
        check_name(name)
        if name in self.vars:
            raise Refused(ErrorCode.EXISTS, f"variable {name!r} exists")
        if vtype not in TYPES:
            raise Refused(ErrorCode.BAD_REQUEST, f"type must be one of {TYPES}")
        if access not in ACCESS:
            raise Refused(ErrorCode.BAD_REQUEST, f"access must be one of {ACCESS}")
        if policy not in POLICIES:
            raise Refused(ErrorCode.BAD_REQUEST, f"policy must be one of {POLICIES}")
        if writers is not None and (not isinstance(writers, list) or
                                    not all(isinstance(w, str) for w in writers)):
            raise Refused(ErrorCode.BAD_REQUEST, "writers must be a list of agent ids")
        cons = Constraints.parse(constraints)
        cons.check(value, vtype, self._checked_value(value))
        var = Variable(name, value, 1, vtype, actor, actor, now, now, access,
                       tuple(writers or ()), policy, cons)
        return {"op": "put", "var": var.public()}

    def _may_write(self, var: Variable, actor: str, via_session: bool) -> None:
        if via_session:
            return
        if var.access == "coordinated" or var.policy == "session":
            raise Refused(ErrorCode.FORBIDDEN if var.access == "coordinated" else
                          ErrorCode.CONFLICT, f"{var.name!r} changes only through a "
                          "coordination session")
        if var.access == "owner_only" and actor != var.owner:
            raise Refused(ErrorCode.FORBIDDEN, f"{var.name!r} may be changed by its owner "
                          f"{var.owner!r} only")
        if var.access == "restricted" and actor != var.owner and actor not in var.writers:
            raise Refused(ErrorCode.FORBIDDEN, f"{actor!r} is not among the writers of "
                          f"{var.name!r}")

    def set(self, name: str, value: Any, actor: str, now: float, *,
            expect_version: int | None = None, via_session: bool = False) -> dict[str, Any]:
        var = self.get(name)
        self._may_write(var, actor, via_session)
        if expect_version is not None and (isinstance(expect_version, bool)
                                           or not isinstance(expect_version, int)):
            raise Refused(ErrorCode.BAD_REQUEST, "expect_version must be an integer")
        if var.policy == "cas_required" and expect_version is None and not via_session:
            raise Refused(ErrorCode.BAD_REQUEST, f"{name!r} requires expect_version "
                          "(compare-and-set)")
        if expect_version is not None and expect_version != var.version:
            raise Refused(ErrorCode.VERSION_MISMATCH, f"{name!r} is at version {var.version}, "
                          f"not {expect_version}")
        if var.policy == "first_write_wins" and var.value is not None and not via_session:
            raise Refused(ErrorCode.CONFLICT, f"{name!r} was already written by "
                          f"{var.modified_by!r} (first write wins)")
        var.constraints.check(value, var.type, self._checked_value(value))
        state = var.public()
        state.update(value=value, version=var.version + 1, modified_by=actor, updated_at=now)
        return {"op": "put", "var": state}

    def delete(self, name: str, actor: str, *, expect_version: int | None = None,
               via_session: bool = False) -> dict[str, Any]:
        var = self.get(name)
        self._may_write(var, actor, via_session)  # deleting is a change like any other
        if expect_version is not None and expect_version != var.version:
            raise Refused(ErrorCode.VERSION_MISMATCH, f"{name!r} is at version {var.version}, "
                          f"not {expect_version}")
        return {"op": "delete", "name": name, "version": var.version + 1}

    # --- applying effects (live and on replay) ---------------------------------------------

    def apply(self, effect: dict[str, Any]) -> Variable | None:
        if effect["op"] == "batch":  # a session's writes: one WAL record, all or nothing
            for e in effect["effects"]:
                self.apply(e)
            return None
        if effect["op"] == "put":
            state = effect["var"]
            var = Variable.from_state(state, self.history_len)
            old = self.vars.get(var.name)
            if old is None:
                self._sorted = None
            if old is not None and "history" not in state:  # a change, not a snapshot load
                history = old.history if isinstance(old.history, deque) \
                    else deque(maxlen=self.history_len)
                history.append((old.version, old.value, old.modified_by, old.updated_at))
                var.history = history
            self.vars[var.name] = var
            return var
        if self.vars.pop(effect["name"], None) is not None:
            self._sorted = None
        return None
