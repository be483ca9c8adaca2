"""A worker: its main loop, its shard (the single writer of one shard's WAL, snapshot and
segment) and its shard endpoint (one-hop variable requests). [worker process]
"""
