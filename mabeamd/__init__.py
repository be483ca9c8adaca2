"""mabeamd: a multi-agent coordination daemon.

The daemon (`mabeamd`) is an arbiter process that supervises worker processes; admins drive
it with `mabeamctl` over a control socket. See docs/operations.md.
"""

__version__ = "0.1.0"
