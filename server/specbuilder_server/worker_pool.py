"""The worker threads for the server's blocking work, giving freed memory back to the system once they fall idle.

``TrimmingPool`` counts the work in flight (its own tasks, and work it does not run that a
caller declares with ``track``: every call's compute) and, once none has run for
``IDLE_SECONDS``, calls its ``trim`` once (the server's lets go of the shared-memory regions kept
mapped, then calls ``malloc_tuning.malloc_trim``). Why: the raised malloc thresholds
(``malloc_tuning``) keep freed multi-MB buffers in glibc's heaps for the next call to reuse, and
the heaps keep their high-water mark; trimming only when idle gives it back without costing a
server under load anything. The first call after an idle spell pays for the pages given back; a
call arriving during a trim waits at most for the arena it allocates from. docs/reliability.md
has the figures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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

    def track(self, work: Future[Any]) -> None:
        """Count work that runs outside the pool (a call's compute) as a task in flight until it is done."""
        self._started()
        work.add_done_callback(lambda _: self._finished())

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
