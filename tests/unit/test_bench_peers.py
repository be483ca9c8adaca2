"""scripts/bench's list of missing peers (benchkit/peers.py): what a fresh machine sees."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mabeamd.testing import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from benchkit import peers


def test_missing_servers_are_named_with_how_to_get_them(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server, no etcd on this PATH
    monkeypatch.delenv("MABEAM_ETCD", raising=False)
    found = peers.peers()
    missing = {p.name: p.missing for p in found if p.missing}
    assert "apt-get install redis-server" in missing["Redis 7 (redis-server + redis-py)"]
    assert "apt-get install etcd-server" in missing["etcd 3 members + aetcd (raw etcd)"]
    text = peers.summary(found)
    assert text.startswith("peers MISSING (2 of 4)") and "[variables, variables at scale]" \
        in text


def test_all_present_is_one_line() -> None:
    found = [peers.Peer("A", "x", ""), peers.Peer("B", "y", "")]
    assert peers.summary(found) == "peers: all present (A; B)"
