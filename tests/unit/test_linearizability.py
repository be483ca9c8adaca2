"""The register-history linearizability checker (tests/support/linearizability.py): known
good and known bad histories, widened random sequential executions (always linearizable),
mutated ones (never), and agreement with a brute force over every order on small ones."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.linearizability import CheckTooBig, Kind, Op, check

# --- builders (key "k" unless told) ---------------------------------------------------------


def get(client: str, call: float, ret: float | None, value: Any, version: int | None = None,
        key: str = "k") -> Op:
    return Op(client, key, "get", call, ret, value=value, version=version)


def put(client: str, call: float, ret: float | None, arg: Any, version: int | None = None,
        key: str = "k") -> Op:
    return Op(client, key, "set", call, ret, arg=arg, version=version)


def cas(client: str, call: float, ret: float | None, arg: Any, expect: int, ok: bool | None,
        version: int | None = None, key: str = "k") -> Op:
    return Op(client, key, "cas", call, ret, arg=arg, expect=expect, ok=ok, version=version)


def delete(client: str, call: float, ret: float | None, ok: bool | None, key: str = "k") -> Op:
    return Op(client, key, "delete", call, ret, ok=ok)


def linearizable(history: list[Op]) -> bool:
    result = check(history)
    assert result.ok == (result.key is None)
    return result.ok


# --- known linearizable -------------------------------------------------------------------


def test_empty_and_read_only_histories() -> None:
    assert linearizable([])
    assert linearizable([get("a", 0, 1, None), get("b", 2, 3, None, 0)])
    assert not linearizable([get("a", 0, 1, "x")])


def test_a_sequential_history_passes() -> None:
    h = [put("a", 0, 1, "x", 1), get("b", 2, 3, "x", 1),
         cas("a", 4, 5, "y", 1, True, 2), cas("b", 6, 7, "z", 1, False, 2),
         get("a", 8, 9, "y", 2), delete("b", 10, 11, True), delete("a", 12, 13, False),
         get("b", 14, 15, None), put("a", 16, 17, "w", 1),  # re-created: version 1 again
         get("b", 18, 19, "w", 1), cas("a", 20, 21, "v", 0, False, 1)]
    assert linearizable(h)


@pytest.mark.parametrize("seen", [("old", 1), ("new", 2)])
def test_a_get_overlapping_a_set_may_see_either(seen: tuple[str, int]) -> None:
    h = [put("a", 0, 1, "old", 1), put("a", 2, 5, "new", 2), get("b", 3, 4, *seen),
         get("b", 6, 7, "new", 2)]
    assert linearizable(h)


def test_overlapping_writers_in_either_order() -> None:
    h = [put("a", 0, 3, "A"), put("b", 1, 2, "B"), get("c", 4, 5, "A", 2)]
    assert linearizable(h)
    h = [put("a", 0, 3, "A"), put("b", 1, 2, "B"), get("c", 4, 5, "B", 2)]
    assert linearizable(h)


def test_reads_during_overlapping_writes_follow_one_order() -> None:
    # Order A, B: r1 reads A between them, then B; r2 reads B after.
    h = [put("a", 0, 10, "A"), put("b", 0, 10, "B"), get("r1", 1, 2, "A", 1),
         get("r1", 3, 4, "B", 2), get("r2", 5, 6, "B", 2)]
    assert linearizable(h)
    # But once r1 has seen B after A, nobody later can see A at version 1 again.
    assert not linearizable([*h, get("r2", 7, 8, "A", 1)])


def test_equal_timestamps_count_as_overlapping() -> None:
    assert linearizable([put("a", 0, 1, "x"), get("b", 1, 2, None)])
    assert not linearizable([put("a", 0, 1, "x"), get("b", 1.001, 2, None)])


def test_a_pending_write_that_took_effect() -> None:
    h = [put("a", 0, 1, "x", 1), put("b", 2, None, "y"), get("c", 3, 4, "y", 2)]
    assert linearizable(h)


def test_a_pending_write_that_never_took_effect() -> None:
    h = [put("a", 0, 1, "x", 1), put("b", 2, None, "y"), get("c", 3, 4, "x", 1),
         get("c", 50, 51, "x", 1)]
    assert linearizable(h)


def test_a_pending_write_may_take_effect_late() -> None:
    h = [put("a", 0, 1, "x", 1), put("b", 2, None, "y"), get("c", 3, 4, "x", 1),
         get("c", 50, 51, "y", 2)]
    assert linearizable(h)


def test_a_pending_write_takes_effect_once_and_not_before_its_call() -> None:
    assert not linearizable([get("c", 0, 1, "y"), put("b", 2, None, "y")])
    h = [put("a", 0, 1, "x", 1), put("b", 2, None, "y"), get("c", 3, 4, "y", 2),
         get("c", 5, 6, "x", 1)]
    assert not linearizable(h)


@pytest.mark.parametrize(("read", "expected"), [(("x", 1), True), (("y", 2), True),
                                                (("y", 1), False)])
def test_a_pending_cas_did_or_did_not_apply(read: tuple[str, int], expected: bool) -> None:
    h = [put("a", 0, 1, "x", 1), cas("b", 2, None, "y", 1, None), get("c", 3, 4, *read)]
    assert linearizable(h) is expected


def test_pending_fields_are_ignored_and_pending_gets_dropped() -> None:
    # A pending op's recorded result is not an answer: nothing in it is checked.
    h = [put("a", 0, None, "x", version=99), get("b", 0, None, "nonsense", 42),
         cas("c", 0, None, "y", 7, ok=True, version=12), get("d", 5, 6, "x", 1)]
    assert linearizable(h)


def test_cas_with_expect_zero_creates() -> None:
    assert linearizable([cas("a", 0, 1, "x", 0, True, 1), get("b", 2, 3, "x", 1),
                         cas("c", 4, 5, "y", 0, False, 1)])
    assert not linearizable([cas("a", 0, 1, "x", 0, True, 1), cas("c", 4, 5, "y", 0, True)])


def test_a_failed_cas_reports_the_version_it_saw() -> None:
    h = [put("a", 0, 1, "x"), put("a", 2, 3, "y"), cas("b", 4, 5, "z", 1, False, 2)]
    assert linearizable(h)
    h[-1] = cas("b", 4, 5, "z", 1, False, 3)
    assert not linearizable(h)


def test_keys_are_independent() -> None:
    # Each key has its own versions: p is at v3 while q is read at v1.
    h = [put("a", 0, 1, 1, key="p"), put("a", 2, 3, 2, key="p"), put("a", 4, 5, 3, key="p"),
         put("c", 0.5, 0.6, 9, 1, key="q"), get("b", 6, 7, 9, 1, key="q"),
         get("b", 0, 8, 3, 3, key="p")]
    assert linearizable(h)
    # Now q is read before the write to it began: a violation on q alone.
    h[3] = put("c", 7.5, 8.5, 9, 1, key="q")
    result = check(h)
    assert not result.ok
    assert result.key == "q"
    assert [op.key for op in result.stuck] == ["q"]


def test_unhashable_values() -> None:
    h = [put("a", 0, 1, {"n": [1, 2]}), put("b", 2, 3, [1]), put("a", 4, 5, {"n": [1, 2]}),
         get("c", 6, 7, {"n": [1, 2]}, 3)]
    assert linearizable(h)
    h[-1] = get("c", 6, 7, {"n": [1]}, 3)
    assert not linearizable(h)


# --- known non-linearizable ---------------------------------------------------------------


def test_stale_read_after_a_completed_write_fails() -> None:
    assert not linearizable([put("a", 0, 1, "x", 1), put("a", 2, 3, "y", 2),
                             get("b", 4, 5, "x", 1)])
    assert not linearizable([put("a", 0, 1, "x"), get("b", 2, 3, None)])


def test_two_cas_with_the_same_expect_cannot_both_succeed() -> None:
    h = [put("a", 0, 1, "x", 1), cas("b", 2, 4, "y", 1, True), cas("c", 3, 5, "z", 1, True)]
    assert not linearizable(h)
    h[-1] = cas("c", 3, 5, "z", 1, False)
    assert linearizable(h)


def test_a_version_that_never_existed_fails() -> None:
    h = [put("a", 0, 1, "x", 1), put("a", 2, 3, "x", 2), get("b", 4, 5, "x", 3)]
    assert not linearizable(h)
    assert not linearizable([get("b", 4, 5, None, 1)])


def test_reading_a_value_after_a_later_completed_overwrite_fails() -> None:
    # A and B overlap, so either order is fine -- but once a read has seen B with both
    # done, no later read may see A.
    h = [put("a", 0, 3, "A"), put("b", 1, 2, "B"), get("r", 4, 5, "B", 2),
         get("r", 6, 7, "A")]
    assert not linearizable(h)


def test_a_lost_update_fails() -> None:
    # Both writers claim to have produced version 2 from version 1.
    h = [put("a", 0, 1, 0, 1), put("b", 2, 4, 1, 2), put("c", 3, 5, 1, 2)]
    assert not linearizable(h)
    # Read-modify-write with cas: both read v1 and both cas from 1 "succeed".
    h = [put("a", 0, 1, 0, 1), get("b", 2, 3, 0, 1), get("c", 2, 3, 0, 1),
         cas("b", 4, 6, 1, 1, True, 2), cas("c", 5, 7, 1, 1, True, 2),
         get("d", 8, 9, 1, 2)]
    assert not linearizable(h)


def test_delete_semantics() -> None:
    ok = [put("a", 0, 1, "x", 1), delete("b", 2, 3, True), get("c", 4, 5, None),
          delete("b", 6, 7, False), put("a", 8, 9, "y", 1), get("c", 10, 11, "y", 1)]
    assert linearizable(ok)
    assert not linearizable([put("a", 0, 1, "x"), delete("b", 2, 3, True),
                             get("c", 4, 5, "x", 1)])
    assert not linearizable([put("a", 0, 1, "x"), delete("b", 2, 3, False)])
    assert not linearizable([delete("b", 2, 3, True)])
    # After delete + re-create the version restarts at 1, not 3.
    assert not linearizable([put("a", 0, 1, "x", 1), put("a", 2, 3, "x", 2),
                             delete("b", 4, 5, True), put("a", 6, 7, "y", 3)])


def test_a_failure_is_explained() -> None:
    h = [put("w", 0, 1, "x", 1), put("w", 2, 3, "y", 2), get("reader", 4, 5, "x", 1),
         put("other", 0, 1, "z", key="elsewhere")]
    result = check(h)
    assert not result
    assert result.key == "k"
    assert [op.arg for op in result.prefix] == ["x", "y"]
    assert [op.client for op in result.stuck] == ["reader"]
    assert "reader get 'k' [4, 5] -> 'x' v1" in result.explanation
    assert "but the register was 'y' v2" in result.explanation
    assert "Longest linearizable prefix found (2 ops)" in result.explanation


def test_bad_ops_are_refused() -> None:
    with pytest.raises(ValueError, match="returned before"):
        check([get("a", 2, 1, None)])
    with pytest.raises(ValueError, match="integer expect"):
        check([Op("a", "k", "cas", 0, 1, arg=1)])
    with pytest.raises(ValueError, match="only meaningful for cas"):
        check([Op("a", "k", "set", 0, 1, arg=1, expect=0)])
    with pytest.raises(ValueError, match="unknown op kind"):
        check([Op("a", "k", "incr", 0, 1)])  # type: ignore[arg-type]


def test_a_search_too_big_raises_instead_of_running_on() -> None:
    # 16 pending writes that might each have applied, and a read nothing explains.
    h = [put(f"c{i}", 0, None, i) for i in range(16)] + [get("r", 10, 11, "nope")]
    with pytest.raises(CheckTooBig, match="gave up on key 'k'"):
        check(h, max_states=2000)
    with pytest.raises(CheckTooBig, match="max_seconds=0"):
        check(h, max_seconds=0.0)


# --- random histories ---------------------------------------------------------------------

KEYS = ["a", "b", "c"]


def model_step(reg: tuple[Any, int], op: Op) -> tuple[tuple[Any, int], Op]:
    """Run ``op`` on register ``reg`` (value, version): the new register and ``op`` with the
    answer the model gives (an independent restatement of the checker's model)."""
    value, version = reg
    if op.kind == "get":
        return reg, Op(op.client, op.key, "get", op.call, op.ret, value=value,
                       version=version if version else None)
    if op.kind == "set":
        return (op.arg, version + 1), Op(op.client, op.key, "set", op.call, op.ret,
                                         arg=op.arg, version=version + 1)
    if op.kind == "cas":
        won = version == op.expect
        new = (op.arg, version + 1) if won else reg
        return new, Op(op.client, op.key, "cas", op.call, op.ret, arg=op.arg,
                       expect=op.expect, ok=won, version=new[1])
    found = version != 0
    return ((None, 0) if found else reg), Op(op.client, op.key, "delete", op.call, op.ret,
                                             ok=found)


def replays(order: list[Op]) -> bool:
    regs: dict[str, tuple[Any, int]] = {}
    for op in order:
        regs[op.key], model = model_step(regs.get(op.key, (None, 0)), op)
        if op.ret is None:
            continue
        if op.ok is not None and op.ok != model.ok:
            return False
        if op.kind == "get" and op.value != model.value:
            return False
        if op.kind != "delete" and op.version is not None \
                and op.version != (model.version or 0):
            return False
    return True


def brute_force(history: list[Op]) -> bool:
    """Some order of the completed ops plus some of the pending ones, respecting real time,
    replays every answer."""
    done = [op for op in history if op.ret is not None]
    pending = [op for op in history if op.ret is None]
    for r in range(len(pending) + 1):
        for chosen in itertools.combinations(pending, r):
            for order in itertools.permutations(done + list(chosen)):
                if all(later.ret is None or not later.ret < earlier.call
                       for n, earlier in enumerate(order) for later in order[n + 1:]) \
                        and replays(list(order)):
                    return True
    return False


def sequential_ops(rng: random.Random, n: int) -> list[Op]:
    """``n`` ops without times or answers; cas expectations usually hit the current version."""
    ops = []
    regs: dict[str, tuple[Any, int]] = {}
    for i in range(n):
        key = rng.choice(KEYS)
        kind: Kind = rng.choice(["get", "get", "set", "cas", "cas", "delete"])
        reg = regs.get(key, (None, 0))
        expect = rng.choice([reg[1], reg[1], 0, 1, 2]) if kind == "cas" else None
        op = Op(f"c{i % 4}", key, kind, 0.0, 0.0, arg=rng.randrange(4), expect=expect)
        regs[key] = model_step(reg, op)[0]
        ops.append(op)
    return ops


def execute(ops: list[Op], times: list[tuple[float, float | None]]) -> list[Op]:
    """Run ``ops`` in order on the model, recording its answers, with the given times."""
    regs: dict[str, tuple[Any, int]] = {}
    out = []
    for op, (call, ret) in zip(ops, times, strict=True):
        timed = Op(op.client, op.key, op.kind, call, ret, arg=op.arg, expect=op.expect)
        regs[op.key], answered = model_step(regs.get(op.key, (None, 0)), timed)
        out.append(answered)
    return out


def widened(rng: random.Random, n: int, width: float, phantoms: bool = True) -> list[Op]:
    """A sequential execution of ``n`` ops whose op k took effect at time k, each op given an
    interval around its point up to ``width`` either side (so real-time order never
    contradicts the execution order); some ops left unanswered, some answers' versions left
    unknown, and -- if ``phantoms`` -- some writes added that were never answered and never
    took effect.  In random order: the checker must not rely on the order given."""
    ops = sequential_ops(rng, n)
    times: list[tuple[float, float | None]] = []
    for k in range(n):
        call, ret = k - rng.uniform(0, width), k + rng.uniform(0, width)
        times.append((call, None if rng.random() < 0.1 else ret))
    history = [replace(op, version=None) if op.kind != "get" and rng.random() < 0.3 else op
               for op in execute(ops, times)]
    if phantoms:
        for _ in range(rng.randrange(3)):
            key, at = rng.choice(KEYS), rng.uniform(-2, n)
            history.append(put("ghost", at, None, "ghost", key=key) if rng.random() < 0.5
                           else delete("ghost", at, None, None, key=key))
    rng.shuffle(history)
    return history


SEEDS = st.integers(0, 2**32)


@settings(max_examples=300, deadline=None)
@given(seed=SEEDS, n=st.integers(1, 60), width=st.sampled_from([0.0, 0.5, 2.0, 4.0]))
def test_widened_sequential_executions_are_linearizable(seed: int, n: int,
                                                        width: float) -> None:
    history = widened(random.Random(seed), n, width)
    result = check(history)
    assert result.ok, result.explanation


@settings(max_examples=300, deadline=None)
@given(seed=SEEDS, n=st.integers(1, 60), width=st.sampled_from([0.0, 0.5, 2.0, 4.0]))
def test_an_impossible_answer_is_not_linearizable(seed: int, n: int, width: float) -> None:
    rng = random.Random(seed)
    history = widened(rng, n, width, phantoms=False)
    answered = [i for i, op in enumerate(history)
                if op.ret is not None and (op.kind == "get" or op.version is not None)]
    if not answered:
        return
    i = rng.choice(answered)
    op = history[i]
    # No order applies more writes to a key than it has, so this version was never produced.
    writes = sum(1 for o in history if o.key == op.key and o.kind in ("set", "cas"))
    if op.kind == "get" and rng.random() < 0.3:
        history[i] = replace(op, value="never written")
    else:
        history[i] = replace(op, version=rng.choice([writes + 1, writes + 5, -1]))
    result = check(history)
    assert not result.ok
    assert result.key == op.key
    assert history[i] not in result.prefix  # it fits nowhere


def small_history(rng: random.Random) -> list[Op]:
    """Up to 6 ops with arbitrary intervals (ties included) and the answers of a sequential
    run, some then corrupted: a mix of linearizable and not."""
    ops = sequential_ops(rng, rng.randint(1, 6))
    times: list[tuple[float, float | None]] = []
    for _ in ops:
        call = rng.randrange(9) / 2
        times.append((call, None if rng.random() < 0.15 else call + rng.randrange(7) / 2))
    history = execute(ops, times)
    for _ in range(rng.randrange(3)):
        i = rng.randrange(len(history))
        op = history[i]
        history[i] = replace(op, ok=None if op.ok is None else not op.ok,
                             value=rng.choice([None, 0, 1, 2]) if op.kind == "get" else None,
                             version=rng.choice([None, 0, 1, 2, 3]))
    return history


@settings(max_examples=400, deadline=None)
@given(seed=SEEDS)
def test_agrees_with_brute_force(seed: int) -> None:
    history = small_history(random.Random(seed))
    result = check(history)
    assert result.ok == brute_force(history), result.explanation
