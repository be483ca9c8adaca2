"""Coordination sessions: the service in the arbiter (validates, resolves participants,
relays) and the engine in the worker that owns a session's variables (runs it, applies it).
[service: arbiter process; engine: worker process]
"""
