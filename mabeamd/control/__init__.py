"""The control socket mabeamctl talks to: the server (transport) and the admin commands.
[arbiter process]
"""
