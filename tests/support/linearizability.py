"""A linearizability checker for histories of versioned key/value registers.

Cluster tests record what concurrent clients did -- get / set / compare-and-set / delete on a
few keys, each with the time it was invoked, the time its answer came back (if it did) and
what the answer said -- and ask `check` whether some sequential order of those operations
explains every answer while respecting real time.

The model (one independent register per key)
--------------------------------------------
A register holds ``(value, version)``; a missing key is ``(None, 0)``.

========  ================================================================================
get       returns ``(value, version)``; changes nothing.
set       ``version += 1; value = arg``.  On a missing key this creates it at version 1.
cas       with ``expect=e``: succeeds iff the current version is ``e`` (so ``e=0`` means
          "create if missing"), then acts as set; a failed cas changes nothing.
delete    if the key exists: it becomes missing (version 0) and the delete reports that it
          found the key; otherwise nothing changes.  A later re-create starts at version 1
          again, so versions can repeat across a delete (as they do in mabeamd).
========  ================================================================================

What is compared, for operations whose answer was seen (``ret`` is not None):

* get: ``value`` always (a missing key reads ``None``); ``version`` when not None
  (record a read of a missing key as ``value=None`` and ``version=None`` or ``0``);
* set: ``version`` (the version it produced) when not None;
* cas: ``ok`` when not None; ``version`` when not None -- for a successful cas the version
  it produced, for a failed one the version the register was at (what a version-mismatch
  refusal reports);
* delete: ``ok`` (found the key) when not None.

Values are compared with ``==``.  An operation with ``ret=None`` was invoked but never
answered (the client timed out, crashed, lost its connection): it may have taken effect at
any moment after its call, or never, and whatever fields it carries are ignored.  A pending
get therefore constrains nothing and is dropped.

Timestamps of all operations must come from one clock (e.g. ``time.monotonic()`` in the test
process: call before sending, ret after the answer arrived).  Intervals are closed: when one
op's ``ret`` equals another's ``call`` they count as concurrent, which can only make the
checker more lenient, never report a false violation.

The algorithm
-------------
A history is linearizable iff there is a total order of its completed operations, plus any
subset of its pending ones, such that (1) whenever ``a.ret < b.call``, ``a`` comes before
``b`` (real-time order) and (2) running the model in that order reproduces every recorded
answer.

*P-compositionality.*  Linearizability is local (Herlihy & Wing 1990): a history of several
objects is linearizable iff each object's sub-history is.  Every operation here touches one
key, so each key is checked on its own.  Search cost is exponential in the size of the
history being searched, so splitting by key is the most important speed-up.

*Wing & Gong search, linearizing "just in time".*  For one key, build the order one
operation at a time, depth first.  An operation may come next iff no other not-yet-placed
operation returned before it was called, i.e. iff ``op.call <= min(ret of unplaced completed
ops)`` -- a bound that only grows as ops are placed, so the candidates are a short window of
the ops sorted by call (plus any pending op called before the bound).  Apply the candidate
to the model; if the answer it recorded differs from what the model says, the branch is
dead.  Backtrack on dead ends.  The search succeeds as soon as every *completed* op is
placed: pending ops not placed by then "never took effect", which is the same as taking
effect after everything that was observed.

*Memoization (Lowe 2017; Porcupine).*  A search node is fully described by the pair
``(set of placed ops, model state)``: which ops may come next depends only on the set, and
how they behave only on the state.  So two nodes with equal pairs have identical subtrees,
and a pair once explored (and failed) never needs exploring again.  The set is an int
bitmask; the state is ``(value class, version)`` where equal written values share one class.
The cache prunes only repeated work, so it changes neither the verdict nor the explanation.

*Pending ops: a dominance rule.*  Placing a pending op only removes options (it could still
have been placed later, or never) and, having no return time, it never restricts which op
may come next.  So a failed node also rules out every node with the same placed *completed*
ops and the same state whose placed pending ops are a superset of its own; the cache keeps,
per (completed set, state), the minimal failed pending sets.  Completed ops are tried before
pending ones, so the node with fewer pending ops placed tends to fail first and cover the
rest.  (Why this is still exact: consider the first node given up on that did have a
successful continuation.  Its successful child was skipped, so a node given up on earlier
covered that child.  That node is then successful too, which is a contradiction.  A node is
never covered by one of its own ancestors, because those are still on the stack.)

*Cost.*  The work is bounded by the number of distinct nodes, and each node costs O(window)
to expand.  With at most ``c`` completed ops overlapping at any moment, the reachable masks
number about ``n * 2**c``, each with a handful of states.  Without pending ops, thousands of
ops per key check in milliseconds, and a violation costs about the same to find.  Pending
writes are what make it expensive: each stays a candidate until the end and may be placed at
any point or never.  Measured here, with 1500 ops on 3 keys and a violation near the end:
up to 3% pending ops (about 15 per key) took 0.01-2 s, while 10% (about 50 per key) gave
up at 300k states.  So keep the number of unanswered writes per key small (tens), e.g. by
giving up on a cluster run after a few timeouts.  Passing and failing on a clear early
violation are both fast regardless.  ``max_states`` / ``max_seconds`` turn a runaway search
into a `CheckTooBig` instead of a hang.

Usage::

    from tests.support.linearizability import Op, check

    result = check(history)
    assert result.ok, result.explanation
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CheckTooBig", "Kind", "Op", "Result", "check"]

Kind = Literal["get", "set", "cas", "delete"]
_KINDS = ("get", "set", "cas", "delete")
_GET, _SET, _CAS, _DELETE = range(4)
_MISSING = -1  # value class of a missing key
_INF = math.inf
_SHOW_PREFIX = 15  # last ops of the longest prefix shown in an explanation
_SHOW_STUCK = 10  # candidate ops explained one by one


@dataclass(frozen=True)
class Op:
    """One operation of a history.  See the module docstring for the meaning of results."""

    client: str
    key: str
    kind: Kind
    call: float  # invocation time
    ret: float | None  # completion time; None = no answer seen (may or may not have applied)
    arg: Any = None  # value written by set / cas
    expect: int | None = None  # cas only: the version it requires
    ok: bool | None = None  # cas: succeeded; delete: found the key
    value: Any = None  # get: the value read (None if missing)
    version: int | None = None  # get: version read; set/cas: version produced (failed cas: seen)

    @property
    def pending(self) -> bool:
        return self.ret is None

    def describe(self) -> str:
        """One line, e.g. ``c2 cas 'k'='b' if v1 [0.5, 1.25] -> ok v2``."""
        span = f"[{_t(self.call)}, {'...' if self.ret is None else _t(self.ret)}]"
        if self.kind == "get":
            head = f"{self.client} get {self.key!r}"
        elif self.kind == "set":
            head = f"{self.client} set {self.key!r}={self.arg!r}"
        elif self.kind == "cas":
            head = f"{self.client} cas {self.key!r}={self.arg!r} if v{self.expect}"
        else:
            head = f"{self.client} delete {self.key!r}"
        return f"{head} {span} -> {self._outcome()}"

    def _outcome(self) -> str:
        if self.ret is None:
            return "? (no answer)"
        ver = "" if self.version is None else f" v{self.version}"
        if self.kind == "get":
            if self.value is None and not self.version:
                return "missing"
            return f"{self.value!r}{ver}"
        if self.kind == "set":
            return f"ok{ver}"
        if self.kind == "cas":
            if self.ok is None:
                return f"?{ver}"
            return f"ok{ver}" if self.ok else f"failed{' (at' + ver + ')' if ver else ''}"
        return {True: "found", False: "not found", None: "?"}[self.ok]


@dataclass(frozen=True)
class Result:
    """The verdict.  Truthy iff linearizable, so ``assert check(h), check(h).explanation``
    works -- and a bare ``assert check(h)`` cannot pass by accident."""

    ok: bool
    key: str | None = None  # failure: the first key (in sorted order) with no linearization
    explanation: str = ""  # failure: human-readable account, see `_explain`
    prefix: tuple[Op, ...] = ()  # failure: the longest linearizable prefix found for `key`
    stuck: tuple[Op, ...] = ()  # failure: the ops that could have come next but did not fit
    states: int = 0  # search nodes explored, over all keys checked

    def __bool__(self) -> bool:
        return self.ok


class CheckTooBig(Exception):
    """The search exceeded its budget: the history is too concurrent (or has too many pending
    writes) on one key to be checked within ``max_states`` / ``max_seconds``."""

    def __init__(self, key: str, states: int, elapsed: float, max_states: int,
                 max_seconds: float | None) -> None:
        self.key, self.states, self.elapsed = key, states, elapsed
        limit = f"max_states={max_states}" + (
            "" if max_seconds is None else f", max_seconds={max_seconds:g}")
        super().__init__(
            f"linearizability check gave up on key {key!r} after {states} states in "
            f"{elapsed:.2f}s ({limit}); the history has too many overlapping or pending ops "
            "on that key -- record fewer or shorter ones, or raise the limit")


def check(history: Iterable[Op], *, max_states: int = 250_000,
          max_seconds: float | None = 30.0) -> Result:
    """Is ``history`` linearizable for the register model?  Keys are checked one by one (in
    sorted order) and the first key without a linearization is reported.

    ``max_states`` bounds the search nodes explored (over all keys; each costs ~150 bytes
    plus the history's length in bits) and ``max_seconds`` the wall time; past either,
    `CheckTooBig` is raised.  Raises ValueError for a malformed op.
    """
    by_key: dict[str, list[Op]] = {}
    for op in history:
        _validate(op)
        by_key.setdefault(op.key, []).append(op)
    budget = _Budget(max_states, max_seconds)
    for key in sorted(by_key):
        failure = _Search(key, by_key[key], budget).run()
        if failure is not None:
            prefix, stuck, explanation = failure
            return Result(False, key, explanation, prefix, stuck, budget.states)
    return Result(True, states=budget.states)


# --- internals ---------------------------------------------------------------------------


def _t(x: float) -> str:
    return f"{x:.6f}".rstrip("0").rstrip(".")


def _validate(op: Op) -> None:
    if op.kind not in _KINDS:
        raise ValueError(f"unknown op kind {op.kind!r}: {op!r}")
    if not math.isfinite(op.call):
        raise ValueError(f"call time must be finite: {op!r}")
    if op.ret is not None and not op.ret >= op.call:
        raise ValueError(f"op returned before it was called: {op!r}")
    if op.kind == "cas":
        if not isinstance(op.expect, int) or isinstance(op.expect, bool):
            raise ValueError(f"cas needs an integer expect: {op!r}")
    elif op.expect is not None:
        raise ValueError(f"expect is only meaningful for cas: {op!r}")


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. an array's ambiguous truth value
        return False


class _Budget:
    def __init__(self, max_states: int, max_seconds: float | None) -> None:
        self.max_states, self.max_seconds = max_states, max_seconds
        self.start = time.monotonic()
        self.states = 0

    def tick(self, key: str) -> None:
        self.states += 1
        over = self.states > self.max_states
        if not over and self.max_seconds is not None and self.states % 2048 == 0:
            over = time.monotonic() - self.start > self.max_seconds
        if over:
            raise CheckTooBig(key, self.states, time.monotonic() - self.start,
                              self.max_states, self.max_seconds)


class _Search:
    """The search over one key's sub-history.

    Ops are numbered completed ones first (by call time), then pending ones (by call time);
    bit ``i`` of a mask says op ``i`` is placed.  A node is (mask, value class, version).
    """

    def __init__(self, key: str, ops: list[Op], budget: _Budget) -> None:
        self.key, self.budget = key, budget
        by_call = sorted(ops, key=lambda op: op.call)
        done = [op for op in by_call if not op.pending]
        # A pending get has no effect and nothing to check: drop it.
        pending = [op for op in by_call if op.pending and op.kind != "get"]
        self.ops = done + pending
        self.n_done = nd = len(done)
        n = len(self.ops)
        self.required = (1 << nd) - 1
        self.calls = [op.call for op in self.ops]
        self.rets = [_INF if op.ret is None else op.ret for op in self.ops]
        self.by_ret = sorted(range(nd), key=lambda i: self.rets[i])
        self.kind = [_KINDS.index(op.kind) for op in self.ops]
        self.expect = [op.expect for op in self.ops]
        # What each op's answer said; None = not checked (always so for a pending op).
        self.want_ok = [None if op.pending else op.ok for op in self.ops]
        self.want_ver = [None if op.pending else op.version for op in self.ops]
        # Value classes: writes of equal values share one, so equal states meet in the cache.
        self.reps: list[Any] = []
        self.cls = [_MISSING] * n
        hashed: dict[Any, int] = {}
        unhashable: list[int] = []
        for i, op in enumerate(self.ops):
            if op.kind not in ("set", "cas"):
                continue
            try:
                c = hashed.get(op.arg)
                if c is None:
                    c = hashed[op.arg] = len(self.reps)
                    self.reps.append(op.arg)
            except TypeError:  # unhashable (a dict, a list): compare with earlier ones
                c = next((u for u in unhashable if _equal(self.reps[u], op.arg)), None)
                if c is None:
                    c = len(self.reps)
                    unhashable.append(c)
                    self.reps.append(op.arg)
            self.cls[i] = c
        self._reads: dict[tuple[int, int], bool] = {}

    # -- the model -------------------------------------------------------------------------

    def reads(self, i: int, c: int) -> bool:
        """Does get ``i``'s recorded value equal the value of class ``c``?"""
        if c == _MISSING:
            return self.ops[i].value is None
        hit = self._reads.get((i, c))
        if hit is None:
            hit = self._reads[i, c] = _equal(self.reps[c], self.ops[i].value)
        return hit

    def step(self, i: int, c: int, v: int) -> tuple[int, int] | None:
        """Apply op ``i`` to state ``(c, v)``: the new state, or None if the answer it
        recorded is not what the model gives."""
        kind, want_ver = self.kind[i], self.want_ver[i]
        if kind == _GET:
            if want_ver is not None and want_ver != v:
                return None
            return (c, v) if self.reads(i, c) else None
        if kind == _SET:
            return None if want_ver is not None and want_ver != v + 1 else (self.cls[i], v + 1)
        if kind == _CAS:
            success = v == self.expect[i]
            want_ok = self.want_ok[i]
            if want_ok is not None and want_ok != success:
                return None
            if success:
                return None if want_ver is not None and want_ver != v + 1 else \
                    (self.cls[i], v + 1)
            return None if want_ver is not None and want_ver != v else (c, v)
        found = v != 0
        want_ok = self.want_ok[i]
        if want_ok is not None and want_ok != found:
            return None
        return (_MISSING, 0) if found else (c, v)

    def candidates(self, mask: int, r: int = 0, lo: int = 0) -> tuple[list[int], int, int]:
        """The unplaced ops that may come next -- those called no later than the earliest
        return among the unplaced completed ops -- completed ones first.  ``r`` / ``lo`` are
        hints (from the parent node) that ``by_ret[:r]`` and ops ``[:lo]`` are all placed;
        returned updated.  Needs at least one completed op unplaced."""
        by_ret, calls, nd = self.by_ret, self.calls, self.n_done
        while mask >> by_ret[r] & 1:
            r += 1
        while mask >> lo & 1:
            lo += 1
        limit = self.rets[by_ret[r]]
        out = []
        for i in range(lo, nd):
            if calls[i] > limit:
                break
            if not mask >> i & 1:
                out.append(i)
        for i in range(nd, len(calls)):
            if calls[i] > limit:
                break
            if not mask >> i & 1:
                out.append(i)
        return out, r, lo

    # -- the search ------------------------------------------------------------------------

    def run(self) -> tuple[tuple[Op, ...], tuple[Op, ...], str] | None:
        """None if linearizable, else (longest prefix, stuck ops, explanation).

        Pruning: a node that failed rules out every later node with the same placed
        completed ops and the same state whose placed *pending* ops are a superset of its
        own -- placing a pending op only removes options (it could still be placed later,
        or never), and pending ops never constrain which op comes next.  (Soundness: take
        the first node ever given up on that had a successful continuation; its successful
        child was not pushed, so it was covered by a node given up on before it, which
        covers a successful node and so was successful itself -- contradiction.  The exact
        Lowe / Porcupine cache is the special case of equal sets; a node is never covered
        by one of its ancestors, which are all on the stack and not yet given up on.)
        Completed ops are tried before pending ones, so the cheaper node -- fewer pending
        ops placed -- tends to fail first and cover the others.
        """
        required, nd = self.required, self.n_done
        if required == 0:
            return None
        failed: dict[tuple[int, int, int], list[int]] = {}
        path: list[int] = []  # ops placed on the way to the top frame
        best: list[int] = []  # the path that placed the most completed ops
        best_done = -1
        first, r, lo = self.candidates(0)
        stack: list[tuple[int, int, int, Iterator[int], int, int]] = [
            (0, _MISSING, 0, iter(first), r, lo)]
        step, tick = self.step, self.budget.tick
        while stack:
            mask, c, v, todo, r, lo = stack[-1]
            for i in todo:
                nxt = step(i, c, v)
                if nxt is None:
                    continue
                nmask = mask | 1 << i
                done = nmask & required
                if done == required:
                    return None
                placed_pending = nmask >> nd
                covering = failed.get((done, *nxt))
                if covering and any(f & ~placed_pending == 0 for f in covering):
                    continue
                tick(self.key)
                path.append(i)
                if done.bit_count() > best_done:
                    best, best_done = path[:], done.bit_count()
                cands, nr, nlo = self.candidates(nmask, r, lo)
                stack.append((nmask, nxt[0], nxt[1], iter(cands), nr, nlo))
                break
            else:  # every way on from here fails
                stack.pop()
                if path:
                    path.pop()
                node, pm = (mask & required, c, v), mask >> nd
                # Keep the list an antichain: drop the supersets this node now covers.
                failed[node] = [f for f in failed.get(node, ()) if pm & ~f != 0] + [pm]
        return self._explain(best)

    # -- explaining a failure --------------------------------------------------------------

    def register(self, c: int, v: int) -> str:
        return "missing" if c == _MISSING else f"{self.reps[c]!r} v{v}"

    def why(self, i: int, c: int, v: int) -> str:
        """Why op ``i`` cannot come next in state ``(c, v)``."""
        op, reg = self.ops[i], self.register(c, v)
        if self.step(i, c, v) is not None:
            return f"fits after the prefix (register {reg}), but nothing can follow it"
        if op.kind == "get":
            return f"read {op._outcome()} but the register was {reg}"
        if op.kind == "set":
            return f"returned v{op.version} but would have produced v{v + 1}"
        if op.kind == "cas":
            success = v == op.expect
            if op.ok is not None and op.ok != success:
                return (f"{'succeeded' if op.ok else 'failed'} but the register was {reg}, "
                        f"so it would have {'succeeded' if success else 'failed'}")
            if success:
                return f"returned v{op.version} but would have produced v{v + 1}"
            return f"reported v{op.version} but the register was at v{v}"
        return (f"reported {'found' if op.ok else 'not found'} but the register was "
                f"{reg}")

    def _explain(self, best: list[int]) -> tuple[tuple[Op, ...], tuple[Op, ...], str]:
        mask, c, v = 0, _MISSING, 0
        lines = [f"key {self.key!r}: no linearization of its {len(self.ops)} ops "
                 f"({self.n_done} answered).",
                 f"Longest linearizable prefix found ({len(best)} ops):"]
        if not best:
            lines[-1] = "No op can even come first."
        shown_from = max(0, len(best) - _SHOW_PREFIX)
        if shown_from:
            lines.append(f"  ... {shown_from} earlier ops ...")
        for n, i in enumerate(best, 1):
            nxt = self.step(i, c, v)
            assert nxt is not None, "a prefix found by the search replays"
            mask, (c, v) = mask | 1 << i, nxt
            if n > shown_from:
                lines.append(f"  {n:3}. {self.ops[i].describe()}   => {self.register(c, v)}")
        stuck, r, _ = self.candidates(mask)
        lines.append("None of the ops that could come next fits:")
        for i in stuck[:_SHOW_STUCK]:
            lines.append(f"  - {self.ops[i].describe()}: {self.why(i, c, v)}")
        if len(stuck) > _SHOW_STUCK:
            lines.append(f"  ... and {len(stuck) - _SHOW_STUCK} more")
        first = self.by_ret[r]
        unplaced = self.n_done - (mask & self.required).bit_count()
        lines.append(f"{unplaced} answered ops remain unplaced; the earliest to return, "
                     f"{self.ops[first].describe()}, must precede every op called after "
                     f"{_t(self.rets[first])}.")
        return (tuple(self.ops[i] for i in best), tuple(self.ops[i] for i in stuck),
                "\n".join(lines))
