"""The cluster shard (cluster/shard.py) against a dict model, on a real 3-member etcd.

A hypothesis state machine drives two "nodes" -- two ClusterShard instances of the same
shard, as two daemons' workers would hold it -- with creates, sets, compare-and-sets and
deletes on either, restarts of either (the cache dropped and listed again from etcd), and
checks every answer against the model, every consistent read at once, and every node's
cache once it has caught up with the watch.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mabeamd.cluster.local import LocalEtcd, etcd_binary
from mabeamd.cluster.pending import Pending
from mabeamd.cluster.shard import ClusterShard
from mabeamd.net.wire import ErrorCode, WireError
from mabeamd.testing import short_tmpdir

pytestmark = [
    pytest.mark.skipif(etcd_binary() is None, reason="etcd not installed (Debian: etcd-server)"),
    pytest.mark.timeout(600),
]

NAMES = st.sampled_from(["a", "b", "c", "d/e"])
VALUES = st.one_of(st.integers(-5, 5), st.text(max_size=4), st.none(),
                   st.lists(st.integers(0, 3), max_size=3))
NODES = st.integers(0, 1)
_runs = itertools.count()


@pytest.fixture(scope="module")
def etcd() -> Iterator[LocalEtcd]:
    e = LocalEtcd(short_tmpdir() / "etcd").start()
    yield e
    e.stop()


def test_cluster_shard_matches_a_dict_model(etcd: LocalEtcd) -> None:
    shm = short_tmpdir()

    class Model(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.cluster = f"model{next(_runs)}"
            self.model: dict[str, tuple[Any, int]] = {}
            self.histories: dict[str, list[Any]] = {}
            self.nodes = [self._node(i) for i in range(2)]

        def _node(self, i: int) -> ClusterShard:
            shard = ClusterShard(0, 1, Path(shm), f"m{self.cluster}n{i}x{time.monotonic_ns()}",
                                 etcd=etcd.endpoints, cluster=self.cluster, node=f"n{i}",
                                 timeout=5.0, history=3, max_value=1 << 16)
            self.loop.run_until_complete(shard.load())
            return shard

        def _call(self, i: int, op: str, body: dict[str, Any], actor: str = "ag",
                  ) -> Any:
            result, _ = self.nodes[i].handle(op, body, actor, time.time())
            if type(result) is Pending:
                result, _ = self.loop.run_until_complete(result.result)
            return msgpack.unpackb(bytes(result), raw=False) \
                if isinstance(result, (bytes, bytearray)) else result

        def _refused(self, i: int, op: str, body: dict[str, Any]) -> str:
            with pytest.raises(WireError) as err:
                self._call(i, op, body)
            return str(err.value.code)

        @rule(i=NODES, name=NAMES, value=VALUES)
        def create(self, i: int, name: str, value: Any) -> None:
            body = {"name": name, "value": value}
            if name in self.model:
                # The node may not have seen the create yet: then etcd's compare refuses it
                # and the retry, on the fresh state, says exists.
                assert self._refused(i, "var.create", body) == ErrorCode.EXISTS
                return
            got = self._call(i, "var.create", body)
            assert got["version"] == 1 and got["value"] == value
            self.model[name] = (value, 1)
            self.histories[name] = []

        @rule(i=NODES, name=NAMES, value=VALUES, cas=st.booleans(), off=st.integers(-1, 1))
        def set(self, i: int, name: str, value: Any, cas: bool, off: int) -> None:
            body: dict[str, Any] = {"name": name, "value": value}
            current = self.model.get(name)
            if cas:
                body["expect_version"] = (current[1] if current else 1) + off
            if current is None:
                assert self._refused(i, "var.set", body) == ErrorCode.NOT_FOUND
                return
            if cas and off:
                assert self._refused(i, "var.set", body) == ErrorCode.VERSION_MISMATCH
                return
            got = self._call(i, "var.set", body)
            assert got["version"] == current[1] + 1 and got["value"] == value
            self.histories[name].append((current[1], current[0]))
            self.model[name] = (value, current[1] + 1)

        @rule(i=NODES, name=NAMES)
        def delete(self, i: int, name: str) -> None:
            if name not in self.model:
                assert self._refused(i, "var.delete", {"name": name}) == ErrorCode.NOT_FOUND
                return
            got = self._call(i, "var.delete", {"name": name})
            assert got["deleted"] is True
            del self.model[name]
            del self.histories[name]

        @rule(i=NODES, name=NAMES)
        def consistent_get(self, i: int, name: str) -> None:
            if name not in self.model:
                assert self._refused(i, "var.get", {"name": name, "consistent": True}) \
                    == ErrorCode.NOT_FOUND
                return
            got = self._call(i, "var.get", {"name": name, "consistent": True})
            assert (got["value"], got["version"]) == self.model[name]

        @rule(i=NODES)
        def restart(self, i: int) -> None:
            self.loop.run_until_complete(self.nodes[i].aclose())
            self.nodes[i].close()
            self.nodes[i] = self._node(i)

        @precondition(lambda self: bool(self.model))
        @rule(i=NODES)
        def history(self, i: int) -> None:
            self.converge()
            for name, past in self.histories.items():
                got = self._call(i, "var.history", {"name": name})
                assert [(h["version"], h["value"]) for h in got["history"]] == past[-3:]

        @invariant()
        def converge(self) -> None:
            """Every node's cache reaches the model (the watch delivers the other's writes)."""
            deadline = time.monotonic() + 20
            for node in self.nodes:
                while True:
                    seen = {n: (v.value, v.version) for n, v in node.store.vars.items()}
                    if seen == self.model:
                        break
                    assert time.monotonic() < deadline, (seen, self.model)
                    self.loop.run_until_complete(asyncio.sleep(0.01))

        def teardown(self) -> None:
            for node in self.nodes:
                self.loop.run_until_complete(node.aclose())
                node.close()
            self.loop.close()

    Model.TestCase.settings = settings(max_examples=12, stateful_step_count=25, deadline=None,
                                       suppress_health_check=list(HealthCheck))
    Model.TestCase().runTest()
