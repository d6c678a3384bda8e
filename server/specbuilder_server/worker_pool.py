"""The worker threads for the server's blocking work, giving freed memory back to the system once it falls idle.

``malloc_tuning.tune_malloc`` keeps freed multi-MB buffers in glibc's heaps so the next call reuses
them instead of page-faulting in fresh ones. The price is that the heaps keep their high-water
mark: round after round of the reliability suite's limits (tests/reliability/test_exhaustion.py)
a server measured idle grew 419 -> 669 MB in 8 rounds. ``TrimmingPool`` counts the work in
flight (its own tasks, and every call's compute: ``working``) and, once none has run for ``IDLE_SECONDS``, calls
``malloc_trim`` once (after letting go of the shared-memory regions kept mapped: ``lifecycle.when_idle``);
with the arenas capped (``malloc_tuning.ARENAS``) the same server stays level (360-400 MB over 20 rounds). Under load
nothing changes (3.2 MB Evaluate calls back to back: same latency, no page faults); the first
call after an idle spell pays for the pages given back (about 3,900 faults, 10-15 ms here). A
call arriving during a trim waits at most for the arena it allocates from.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

IDLE_SECONDS = 2.0
"""How long the pool must have had no call in flight before memory is trimmed."""
P = ParamSpec("P")
T = TypeVar("T")


class TrimmingPool(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` that runs ``trim`` once after each busy spell, ``idle_seconds`` after its last task ended."""

    def __init__(self, max_workers: int, trim: Callable[[], object], idle_seconds: float = IDLE_SECONDS, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers, thread_name_prefix=thread_name_prefix)
        self._trim = trim
        self._idle_seconds = idle_seconds
        self._changed = threading.Condition()
        self._running = 0
        self._idle_since = time.monotonic()
        self._worked = False
        """A task ran since the last trim."""
        self._closed = False
        self._trimmer = threading.Thread(target=self._trim_when_idle, name=f"{thread_name_prefix}-trim", daemon=True)
        self._trimmer.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        self._started()
        try:
            return super().submit(self._counted, fn, *args, **kwargs)
        except BaseException:
            self._finished()
            raise

    @contextmanager
    def working(self) -> Iterator[None]:
        """Count work that runs outside the pool (a call on the local socket) as a task in flight."""
        self._started()
        try:
            yield
        finally:
            self._finished()

    def _started(self) -> None:
        with self._changed:
            self._running += 1
            if not self._worked:
                self._worked = True
                self._changed.notify()  # the trimmer waits for work without a timeout

    def _counted(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        finally:
            self._finished()

    def _finished(self) -> None:
        with self._changed:  # no notify: waking the trimmer on every call cost each call a thread switch
            self._running -= 1
            if not self._running:
                self._idle_since = time.monotonic()

    def _wait_for_idle(self) -> bool:
        """Block until the pool has worked and then been idle ``idle_seconds``; False when it is shut down.

        While calls run it looks again every ``idle_seconds``, so a trim comes between one and two
        idle spells after the last call ended."""
        with self._changed:
            while not self._closed:
                if not self._worked:
                    self._changed.wait()
                    continue
                left = self._idle_seconds if self._running else self._idle_since + self._idle_seconds - time.monotonic()
                if left <= 0:
                    self._worked = False
                    return True
                self._changed.wait(left)
            return False

    def _trim_when_idle(self) -> None:
        while self._wait_for_idle():
            self._trim()  # outside the lock: calls may start meanwhile

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        super().shutdown(wait, cancel_futures=cancel_futures)
