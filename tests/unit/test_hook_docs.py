"""docs/plugins.md must document every hook with the signature the code has."""

from __future__ import annotations

import inspect
import re

from mabeamd import hookspecs
from mabeamd.testing import ROOT

DOC = (ROOT / "docs" / "plugins.md").read_text()


def specs() -> dict[str, object]:
    return {name: fn for name, fn in vars(hookspecs).items()
            if name.startswith("mabeamd_") and callable(fn)}


def render(fn: object) -> str:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {fn.__name__}({params}) -> {sig.return_annotation}"  # type: ignore[attr-defined]


def documented() -> dict[str, str]:
    return {m.group(1): m.group(0) for m in re.finditer(r"^def (mabeamd_\w+)\(.*$", DOC, re.M)}


def test_every_hook_is_documented_with_its_signature() -> None:
    docs = documented()
    for name, fn in specs().items():
        assert name in docs, f"{name} is not documented in docs/plugins.md"
        assert docs[name] == render(fn), f"docs/plugins.md has {docs[name]!r}, code has " \
                                         f"{render(fn)!r}"


def test_no_documented_hook_is_missing_from_the_code() -> None:
    assert set(documented()) == set(specs())


def test_docs_state_the_calling_rule_of_each_hook() -> None:
    for name, fn in specs().items():
        opts = getattr(fn, hookspecs.PROJECT + "_spec")
        section = DOC.split(f"#### {name}\n", 1)[1].split("####", 1)[0]
        rule = "first result wins" if opts.get("firstresult") else "All implementations run"
        assert rule in section, f"{name}: docs must say {rule!r}"
        assert rule in (fn.__doc__ or "").replace("\n    ", " "), f"{name} docstring"  # type: ignore[attr-defined]
