"""glibc malloc thresholds for processes that send or receive multi-megabyte messages.

By default glibc serves every allocation above its mmap threshold (128 KiB, raised dynamically
only after a free) with a fresh ``mmap``, and gives free memory at the top of the heap back to
the system once it exceeds its trim threshold (twice the mmap threshold). A multi-megabyte
tensor on the wire makes several buffers of its size per call, which with the thresholds fixed
high are reused from call to call instead of mapped and unmapped each time.

``set_thresholds`` fixes both; the server (``specbuilder_server.malloc_tuning``) picks its own, a
client ``keep_large_buffers``. They are process-wide settings, so a process that sets
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` itself is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
"""The highest glibc raises its mmap threshold by itself on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``)."""
ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
"""The variables through which a process sets the thresholds itself."""


def glibc(function: str) -> Any | None:
    """A function of the C library, None where it has no such function (musl has no mallopt) or there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), function)
    except (OSError, AttributeError):
        return None


def set_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Fix glibc's mmap and trim thresholds (bytes) for this process; False where there is no
    glibc or the environment sets either."""
    if any(name in os.environ for name in ENVIRONMENT):
        return False
    mallopt = glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


@functools.cache
def keep_large_buffers() -> bool:
    """``set_thresholds`` once per process at what glibc reaches by itself once it has freed a
    ``MMAP_THRESHOLD_MAX`` block: allocations up to 32 MiB from the heap, up to 64 MiB of free heap kept."""
    return set_thresholds(MMAP_THRESHOLD_MAX, 2 * MMAP_THRESHOLD_MAX)


__all__ = ["MMAP_THRESHOLD_MAX", "glibc", "keep_large_buffers", "set_thresholds"]
