"""glibc malloc settings for a process that receives multi-megabyte messages.

By default glibc serves every allocation above its mmap threshold (128 KiB, raised
dynamically up to 32 MiB only after a free) with a fresh ``mmap``: each 3 MB request buffer
is page-faulted in on first touch and unmapped when freed, which on a 2-core box tripled the
cost of an Evaluate call (DESIGN.md, "How to measure"). Fixing the thresholds high keeps such
buffers in the heap, reused call after call. Settings given in ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
"""glibc's largest allowed mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``)."""
TRIM_THRESHOLD = 256 * 1024 * 1024
"""Free heap kept before it is returned to the system."""


def tune_malloc() -> bool:
    """Raise the thresholds once for this process; False where there is no glibc or the environment set them."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
