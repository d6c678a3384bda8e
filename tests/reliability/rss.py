"""A server process's resident memory, read from ``/proc/PID/status`` (Linux) while it runs.

``resident_mib`` is the memory the process holds now (``VmRSS``), ``peak_mib`` the most it
ever held (``VmHWM``), ``idle_mib`` what a server holds once it has been idle long enough to give
freed memory back. ``RssSampler`` reads ``VmRSS`` on a thread at a fixed interval for the length
of a ``with`` block: its peak and its samples show a trend a single reading cannot.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from types import TracebackType

import pytest

from specbuilder_server.worker_pool import IDLE_SECONDS

SETTLE_MIB = 80.0
"""How far above its idle baseline (taken after a warm-up) an idle server may stay after the
pressure ends. Idle, the server hands free heap back (``specbuilder_server.worker_pool``), but not all
of it: ``malloc_trim`` cannot shrink the free top of a thread arena's heap (at most 64 MiB, one
glibc heap; the server keeps one such arena per CPU beside the main one), and pages with a live
object in them stay. Measured idle-to-idle here: -5 to +54 MiB, varying with what happens to be
on top when the last call ends. 80 MiB is less than the models one round of the exhaustion test
compiles and lets go (32 of 3-4 MB: 115 MB), so keeping them fails in a single round, as does
keeping a few kB per call over the load test's soak."""

needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from /proc/PID/status (Linux)")
"""Mark for tests that read a process's memory."""


def _status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0]) / 1024  # kB
    raise KeyError(f"/proc/{pid}/status has no {key}")


def resident_mib(pid: int) -> float:
    """Resident memory now, in MiB."""
    return _status_mib(pid, "VmRSS")


def peak_mib(pid: int) -> float:
    """The most resident memory the process has held since it started, in MiB."""
    return _status_mib(pid, "VmHWM")


def idle_mib(pid: int, at_most: float = math.inf, seconds: float = 30.0) -> float:
    """Resident memory of a server left idle: read once it has had time to give freed memory back
    (``IDLE_SECONDS`` and a second more), then, while above ``at_most``, polled for up to ``seconds``."""
    time.sleep(IDLE_SECONDS + 1.0)
    deadline = time.monotonic() + seconds
    while (now := resident_mib(pid)) > at_most and time.monotonic() < deadline:
        time.sleep(0.1)
    return now


class RssSampler:
    """``VmRSS`` of ``pid`` every ``interval`` seconds on a thread, while the ``with`` block runs."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        """(seconds since the block began, MiB)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        started = time.monotonic()
        while True:
            self.samples.append((time.monotonic() - started, resident_mib(self.pid)))
            if self._stop.wait(self.interval):
                return

    @property
    def peak(self) -> float:
        return max(mib for _, mib in self.samples)

    def between(self, start: float, end: float) -> list[float]:
        """The samples taken from ``start`` to ``end`` seconds into the block."""
        return [mib for at, mib in self.samples if start <= at <= end]

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
