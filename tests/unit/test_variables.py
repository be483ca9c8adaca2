"""The variable rules (pure), and random operation sequences against a dict model."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mabeamd.net.wire import WireError
from mabeamd.storage.variables import ShardStore


def code(fn: Any) -> str:
    with pytest.raises(WireError) as exc:
        fn()
    return exc.value.code


def apply(store: ShardStore, effect: dict[str, Any]) -> Any:
    return store.apply(effect)


def test_create_set_cas_delete() -> None:
    s = ShardStore(history_len=2)
    apply(s, s.create("x", 1, "alice", 10.0, vtype="int"))
    assert code(lambda: s.create("x", 2, "bob", 11.0)) == "exists"
    v = apply(s, s.set("x", 2, "bob", 12.0))
    assert (v.value, v.version, v.owner, v.modified_by) == (2, 2, "alice", "bob")
    assert code(lambda: s.set("x", 3, "bob", 13.0, expect_version=1)) == "version_mismatch"
    apply(s, s.set("x", 3, "bob", 13.0, expect_version=2))
    apply(s, s.set("x", 4, "bob", 14.0))
    assert [h[:2] for h in s.get("x").history] == [(2, 2), (3, 3)]  # bounded to 2
    assert code(lambda: s.set("x", "str", "bob", 15.0)) == "constraint_violation"
    apply(s, s.delete("x", "bob"))
    assert code(lambda: s.get("x")) == "not_found"
    assert code(lambda: s.set("x", 1, "bob", 16.0)) == "not_found"


def test_access_modes() -> None:
    s = ShardStore()
    apply(s, s.create("own", 0, "alice", 0, access="owner_only"))
    apply(s, s.create("res", 0, "alice", 0, access="restricted", writers=["bob"]))
    apply(s, s.create("coord", 0, "alice", 0, access="coordinated"))
    assert code(lambda: s.set("own", 1, "bob", 1)) == "forbidden"
    apply(s, s.set("own", 1, "alice", 1))
    apply(s, s.set("res", 1, "bob", 1))
    assert code(lambda: s.set("res", 1, "carol", 1)) == "forbidden"
    assert code(lambda: s.delete("res", "carol")) == "forbidden"
    assert code(lambda: s.set("coord", 1, "alice", 1)) == "forbidden"
    apply(s, s.set("coord", 1, "@session", 1, via_session=True))


def test_conflict_policies() -> None:
    s = ShardStore()
    apply(s, s.create("claim", None, "sys", 0, policy="first_write_wins"))
    apply(s, s.set("claim", "alice", "alice", 1))
    assert code(lambda: s.set("claim", "bob", "bob", 2)) == "conflict"
    apply(s, s.create("cas", 0, "sys", 0, policy="cas_required"))
    assert code(lambda: s.set("cas", 1, "a", 1)) == "bad_request"
    apply(s, s.set("cas", 1, "a", 1, expect_version=1))
    apply(s, s.create("sess", 0, "sys", 0, policy="session"))
    assert code(lambda: s.set("sess", 1, "a", 1)) == "conflict"


@pytest.mark.parametrize("constraints, good, bad", [
    ({"min": 0, "max": 10}, 10, 11),
    ({"min": 0}, 0.5, -1),
    ({"enum": ["red", "green"]}, "green", "blue"),
    ({"max_size": 8}, "short", "much too long"),
])
def test_constraints(constraints: dict[str, Any], good: Any, bad: Any) -> None:
    s = ShardStore()
    apply(s, s.create("c", good, "a", 0, constraints=constraints))
    apply(s, s.set("c", good, "a", 1))
    assert code(lambda: s.set("c", bad, "a", 2)) == "constraint_violation"
    assert s.get("c").version == 2  # the refused write changed nothing


@pytest.mark.parametrize("kwargs", [
    {"vtype": "decimal"}, {"access": "secret"}, {"policy": "random"},
    {"writers": "bob"}, {"constraints": {"min": "0"}}, {"constraints": {"enum": []}},
    {"constraints": {"bogus": 1}},
])
def test_bad_create_options(kwargs: dict[str, Any]) -> None:
    s = ShardStore()
    assert code(lambda: s.create("v", 1, "a", 0, **kwargs)) == "bad_request"
    assert s.vars == {}


def test_value_limits() -> None:
    s = ShardStore(max_value=100)
    assert code(lambda: s.create("big", "x" * 200, "a", 0)) == "too_large"
    assert code(lambda: s.create("odd", {1, 2}, "a", 0)) == "bad_request"
    assert code(lambda: s.create("", 1, "a", 0)) == "bad_request"
    assert code(lambda: s.create("a\nb", 1, "a", 0)) == "bad_request"


names = st.sampled_from(["a", "b", "c"])
vals = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3))
ops = st.lists(st.one_of(
    st.tuples(st.just("create"), names, vals),
    st.tuples(st.just("set"), names, vals, st.one_of(st.none(), st.integers(0, 6))),
    st.tuples(st.just("delete"), names, st.one_of(st.none(), st.integers(0, 6))),
), max_size=50)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_random_operations_match_a_dict_model(program: list[tuple[Any, ...]]) -> None:
    store = ShardStore()
    model: dict[str, tuple[Any, int]] = {}
    effects = []
    for op in program:
        name = op[1]
        if op[0] == "create":
            expected = "exists" if name in model else None
            call = lambda: store.create(name, op[2], "x", 0.0)  # noqa: B023, E731
        elif op[0] == "set":
            expect = op[3]
            expected = ("not_found" if name not in model else
                        "version_mismatch" if expect is not None and expect != model[name][1]
                        else None)
            call = lambda: store.set(name, op[2], "x", 0.0,  # noqa: B023, E731
                                     expect_version=expect)  # noqa: B023
        else:
            expect = op[2]
            expected = ("not_found" if name not in model else
                        "version_mismatch" if expect is not None and expect != model[name][1]
                        else None)
            call = lambda: store.delete(name, "x", expect_version=expect)  # noqa: B023, E731
        if expected is not None:
            assert code(call) == expected
            continue
        effect = call()
        effects.append(effect)
        store.apply(effect)
        if op[0] == "create":
            model[name] = (op[2], 1)
        elif op[0] == "set":
            model[name] = (op[2], model[name][1] + 1)
        else:
            del model[name]
        assert {n: (v.value, v.version) for n, v in store.vars.items()} == model
    # Replaying the logged effects alone rebuilds exactly the same state.
    replayed = ShardStore()
    for effect in effects:
        replayed.apply(effect)
    assert {n: v.state() for n, v in replayed.vars.items()} == \
        {n: v.state() for n, v in store.vars.items()}
