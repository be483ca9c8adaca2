"""Give large freed buffers back to the kernel (arbiter and workers call this at start).

glibc's malloc serves big requests with mmap only up to a threshold that grows each time
such a block is freed (up to 32 MiB): after a burst of megabyte frames every later one comes
from the heap, whose top rarely shrinks, and the process's memory stayed at its peak for
good (a flood of 1 MiB control requests left the arbiter at 1 GiB). A fixed threshold keeps
every buffer of 128 KiB or more mmapped, so freeing it returns it at once; smaller objects
(nearly all of Python's) are unaffected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
THRESHOLD = 128 << 10


def return_big_frees() -> bool:
    """True when set (glibc); elsewhere a no-op."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt knob like it)
        log.debug("mallopt not available; large frees stay with the allocator")
        return False
