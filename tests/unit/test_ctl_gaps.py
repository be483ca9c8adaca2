"""`mabeamctl events`' gap rule: a jump is reported only in a counter whose events the
subscription receives whole (tests/e2e/test_ctl_views.py provokes real drops)."""

from __future__ import annotations

from mabeamd.ctl.tail import Gaps, gap_line


def ev(seq: int, fseq: int) -> dict[str, int]:
    return {"seq": seq, "family_seq": fseq}


def test_every_topic_uses_seq_and_sees_restarts() -> None:
    g = Gaps([])
    assert g.check("agent.registered", ev(5, 1)) is None  # the first sets the baseline
    assert g.check("var.x", ev(6, 1)) is None
    assert g.check("var.x", ev(9, 2)) == (2, "all topics")
    assert g.check("worker.running", ev(1, 1)) == (-1, "all topics")
    assert gap_line((2, "all topics"), False) == "--- 2 events missed (all topics)"
    assert gap_line((-1, "all topics"), True) == '{"restarted": true, "counter": "all topics"}'


def test_whole_families_use_family_seq_narrower_prefixes_none() -> None:
    g = Gaps(["agent.", "var.plan/"])
    assert g.check("agent.registered", ev(10, 3)) is None
    assert g.check("agent.gone", ev(20, 5)) == (1, "agent.*")  # seq jumped by other families
    assert g.check("var.plan/a", ev(21, 7)) is None
    assert g.check("var.plan/b", ev(30, 19)) is None  # other names' var events: not missed
    assert Gaps(["a"]).whole_family("anomaly") and not Gaps(["agent.g"]).whole_family("agent")
