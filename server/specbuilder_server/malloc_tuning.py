"""glibc malloc settings for a process that receives multi-megabyte messages.

By default glibc serves every allocation above its mmap threshold (128 KiB, raised dynamically
up to 32 MiB only after a free) with a fresh ``mmap``: each multi-MB request buffer is
page-faulted in on first touch and unmapped when freed. ``tune_malloc`` fixes the thresholds
high, so such buffers stay in the heap, reused call after call, and caps the arenas that keep
them at one per CPU (``ARENAS``). Settings given in ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_ARENA_MAX`` are left alone. What the heaps keep after a burst
of large calls is given back by ``malloc_trim`` once the server is idle
(``worker_pool.TrimmingPool``). The C library is reached through ``specbuilder_wire.heap``, which the
client uses too. docs/benchmarks.md and docs/reliability.md have the figures.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

from specbuilder_wire.heap import MMAP_THRESHOLD_MAX, glibc, set_thresholds

MMAP_THRESHOLD = MMAP_THRESHOLD_MAX
"""Allocations up to this size come from the heap, however large the messages get."""
TRIM_THRESHOLD = 256 * 1024 * 1024
"""Free heap kept before it is returned to the system."""
M_ARENA_MAX = -8
ARENAS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
"""One malloc arena per CPU this process may use: as many as can allocate at the same moment.
glibc's default (8 per CPU) gives each of the server's threads an arena of its own, each keeping
its high-water mark, so a server's memory would grow round after round of large calls."""


def tune_malloc() -> bool:
    """Raise the thresholds and cap the arenas once for this process; False where there is no glibc
    or the environment set the thresholds (``MALLOC_ARENA_MAX``, where set, is left alone too)."""
    if not set_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD):
        return False
    if "MALLOC_ARENA_MAX" in os.environ:
        return True
    mallopt = glibc("mallopt")
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, ARENAS))


def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``: every arena's free pages back to the system (what the raised
    thresholds keep); None without glibc. ``worker_pool.TrimmingPool`` calls it when the server is idle."""
    trim = glibc("malloc_trim")
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)
