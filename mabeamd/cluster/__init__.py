"""Cluster mode: several nodes as one system on etcd v3 (docs/cluster.md).

The arbiter holds the node's lease and membership (`membership.py`); each worker keeps its
shard's variables in etcd and a list-then-watch cache of them in its segment (`shard.py`).
"""
