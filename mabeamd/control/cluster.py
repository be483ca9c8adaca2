"""The cluster this node belongs to (cluster mode only; docs/cluster.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mabeamd.control.command import command

if TYPE_CHECKING:
    from mabeamd.control.host import ControlHost
    from mabeamd.control.server import Progress


@command("cluster.status", changes=False)
async def status(host: ControlHost, body: dict[str, Any], progress: Progress) -> Any:
    """The cluster: nodes, leases, etcd health, caches.

    Reply: {"cluster", "node", "shards", "revision" (etcd's, now), "lease": {"id", "state"
    ("ok", "uncertain": keepalives failing, "lost": expired), "ttl", "granted",
    "since_keepalive"}, "nodes": [{"node", "advertise", "agents",
    "events" (its event endpoint: every node publishes its own agent.* and session.*
    events), "host", "pid", "version", "started", "lease"}],
    "members": [{"name", "id", "client_urls", "peer_urls"}],
    "endpoints": [{"endpoint", "healthy", "version", "db_size", "leader", "is_leader",
    "raft_term", "raft_index", "ms"} or {"endpoint", "healthy": false, "error"}],
    "caches": [{"shard", "state", "revision" (the cache has every change of its shard up to
    this etcd revision), "watch" (open),
    "watch_events", "commits", "retries", "last_event", "lag_p50", "lag_max" (seconds from a
    remote write to this cache, recent)}], "error" (etcd did not answer)}
    Refused: bad_request (a single node, not in a cluster).
    """
    return await host.cluster_status()
