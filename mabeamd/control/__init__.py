"""The control socket mabeamctl talks to: the server (transport), the admin commands (one
module a group, registered in commands.py) and the host interface they use (host.py).
[arbiter process]
"""
