"""What both processes speak: the wire codec (frames, msgpack, error codes), frame I/O,
ZeroMQ socket set-up, and the arbiter <-> worker link. [arbiter and workers]
"""
