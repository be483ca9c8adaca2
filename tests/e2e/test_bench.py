"""scripts/bench --quick runs and reports honestly (no thresholds: speed is not a unit test)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mabeamd.cluster.local import etcd_binary
from mabeamd.testing import ROOT, short_tmpdir


@pytest.mark.timeout(300)  # the run has its own 240 s limit below
def test_bench_quick_runs_and_writes_json() -> None:
    out = short_tmpdir() / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out",
                        str(out)], capture_output=True, text=True, timeout=240, check=False,
                       cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())
    for key in ("cpu", "cores", "python", "pyzmq", "libzmq", "msgpack"):
        assert result["machine"][key]
    # The test extra brings every peer's client, and .ci/run the servers: none missing, and
    # the output's head says so.
    assert [p["missing"] for p in result["peers"]] == [None] * 4, result["peers"]
    assert "peers: all present" in r.stdout
    rows = {row["metric"]: row for row in result["rows"]}
    ping = rows["control round trip (ping, ipc)"]
    assert ping["status"] == "ok" and ping["samples"] >= 1000 and ping["reps"] == 1
    assert 0 < ping["p50"] <= ping["p95"] <= ping["p99"]
    assert ping["peer_value"] > 0 and ping["ratio"] > 0
    for row in result["rows"]:
        if row["status"] == "ok":
            assert row["p95"] is not None or row["rate"] is not None, row
        else:
            assert row["note"], row  # a row that was not run says why
    # Every issue's rows are in the table, economics included (scipy is a test dependency,
    # so the winner-determination peer runs).
    assert any(m.startswith("sealed-bid auction") for m in rows)
    messages = [v for m, v in rows.items() if m.startswith(("agent.send messages/s",
                                                            "agent -> agent round trip"))]
    assert len(messages) == 3 and all(v["status"] == "ok" and v["peer_value"] > 0
                                      for v in messages), messages
    wdp = next(v for m, v in rows.items() if m.startswith("winner determination"))
    assert wdp["status"] == "ok" and wdp["peer_value"] and wdp["peer_value"] > 0
    memory = next(v for m, v in rows.items() if m.startswith("memory per variable"))
    assert memory["status"] == "ok" and memory["rate"] > 0
    scaled = next(v for m, v in rows.items() if m.startswith("variable read at"))
    assert scaled["status"] == "ok" and scaled["samples"] >= 1000
    # Cluster mode's rows: run on a real 3-member etcd where Debian's etcd is installed (CI
    # installs it), else each says why not.
    cluster = [v for m, v in rows.items()
               if m.startswith("cluster ") and not m.startswith("cluster sim")]
    assert len(cluster) == 13  # cluster_rows (11) and cluster_send_rows (2)
    # The capacity simulation (cluster_sim.py): 3 nodes x 2 agent counts, then the slopes.
    sim = {m: v for m, v in rows.items() if m.startswith("cluster sim")}
    if etcd_binary() is not None:
        assert all(v["status"] == "ok" for v in cluster), cluster
        cas = next(v for m, v in rows.items() if m.startswith("cluster CAS/s"))
        assert cas["rate"] > 0 and cas["peer_value"] > 0 and "CHECK FAILED" not in cas["note"]
        assert all(v["status"] == "ok" for v in sim.values()), sim
        assert len([m for m in sim if m.startswith("cluster sim, ")]) == 6
        # Counts, not speeds: every write reached every node, every key is where it should be.
        events = sim["cluster sim: watch events/s per node"]
        assert events["extra"]["slope"] > 0
        for m, v in sim.items():
            if m.startswith("cluster sim, "):
                x = v["extra"]
                assert x["events"] == x["write"]["acked"] * x["nodes"] or x["write"]["errors"], \
                    (m, x)
                assert v["extra"]["keys"] == v["extra"]["model"]["keys"], (m, v)
    else:
        assert [v["status"] for v in sim.values()] == ["not run"]
    assert r.stdout.splitlines()[1].startswith("peers") and "metric" in r.stdout.splitlines()[3]
