"""The arbiter and how it supervises: the arbiter itself, a watcher per worker slot, child
processes, restart backoff, managed agents, sd_notify, the state directory. [arbiter process]
"""
