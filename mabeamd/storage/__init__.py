"""Variable state and its durability: the variables model (pure), the WAL, snapshots,
shared-memory segments, the sharding rule, and the offline tools (reshard, check-state).
[worker process; sharding and segment reading also in the SDK, the offline tools in mabeamd]
"""
