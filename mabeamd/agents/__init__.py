"""The agent-facing side of the arbiter: the agent endpoint, the agent service and registry,
variable requests relayed to shards, events, CURVE authentication, write credentials.
[arbiter process]
"""
