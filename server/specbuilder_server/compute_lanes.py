"""The threads that run the server's torch work, and the lanes that order it.

Every forward, statistics pass and training run of the process runs on ``THREADS``
(``ComputeThreads``), which keeps at most one thread idle: a new thread starts only when none is
idle, and one that finishes while another is idle ends. Why: libgomp, the OpenMP runtime of
torch's Linux wheels, gives each thread that enters a parallel region a team of its own, and once a
process has more OpenMP threads than CPUs idle workers sleep instead of spinning, so every
operation pays a wake-up; a process that does one thing at a time holds one team
(docs/benchmarks.md, "One OpenMP team per server").

Forwards and statistics run in ``Lane``s: a lane runs its tasks one at a time, in the order they
came. ``Lanes`` are the server's two, one for small calls and one for large ones by each call's
estimated cost, so a small call never waits behind a large one (it shares the cores with it
instead); training runs (``start_on_compute_thread``) run alongside. A task cancelled before it
starts never runs; one that runs stops at its ``Budget``'s next check (``compute_budget``).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
Task = Callable[[], None]


def _settle(future: Future[T], fn: Callable[[], T]) -> bool:
    """Run ``fn`` for ``future`` and hand it what ``fn`` returns or raises; False (``fn`` not run) if it was cancelled."""
    if not future.set_running_or_notify_cancel():
        return False
    try:
        future.set_result(fn())
    except BaseException as error:  # noqa: BLE001 - handed to whoever waits on the future
        future.set_exception(error)
    return True


class _Worker(threading.Thread):
    """A thread that runs the tasks handed to it until its pool lets it go."""

    def __init__(self, pool: ComputeThreads) -> None:
        super().__init__(name="specbuilder-compute", daemon=True)  # an idle one must not hold up the interpreter's exit
        self._pool = pool
        self._tasks: queue.SimpleQueue[Task] = queue.SimpleQueue()

    def give(self, task: Task) -> None:
        self._tasks.put(task)

    def run(self) -> None:
        while True:
            self._tasks.get()()
            if not self._pool.rested(self):
                return


class ComputeThreads:
    """Runs work on threads of its own, keeping at most one of them idle."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: _Worker | None = None

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """``fn(*args, **kwargs)`` on the idle thread, or on a new one; its future."""
        future: Future[T] = Future()
        self.start(lambda: _settle(future, lambda: fn(*args, **kwargs)))
        return future

    def start(self, task: Task) -> None:
        """Run ``task`` (which handles its own errors) on the idle thread, or on a new one."""
        with self._lock:
            worker, self._idle = self._idle, None
        if worker is None:
            worker = _Worker(self)
            worker.start()
        worker.give(task)

    def rested(self, worker: _Worker) -> bool:
        """After a task: ``worker`` becomes the idle thread (True), or ends when there is one already (False)."""
        with self._lock:
            if self._idle is not None:
                return False
            self._idle = worker
            return True


THREADS = ComputeThreads()
"""The process's compute threads, shared by every server in it: libgomp counts its threads per process."""


class Lane:
    """Runs tasks on ``threads`` one at a time, first come first served; a task cancelled while it waits is skipped."""

    def __init__(self, threads: ComputeThreads = THREADS, observe: Callable[[float, float], None] | None = None, name: str = "") -> None:
        self.name = name
        """How metrics label the lane."""
        self._threads = threads
        self._observe = observe
        """Told each task's seconds waited and seconds run (the server's metrics)."""
        self._lock = threading.Lock()
        self._waiting: deque[tuple[Callable[[], Any], Future[Any], float]] = deque()
        self._busy = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """``fn(*args, **kwargs)`` once every task submitted before it has run; its future."""
        future: Future[T] = Future()
        with self._lock:
            self._waiting.append((lambda: fn(*args, **kwargs), future, time.perf_counter()))
            if self._busy:
                return future
            self._busy = True
        self._threads.start(self._drain)
        return future

    def _drain(self) -> None:
        """Run the waiting tasks until none is left, on one compute thread."""
        while True:
            with self._lock:
                if not self._waiting:
                    self._busy = False
                    return
                fn, future, submitted = self._waiting.popleft()
            started = time.perf_counter()
            if not _settle(future, fn):
                continue
            if self._observe is not None:
                self._observe(started - submitted, time.perf_counter() - started)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` in its turn; cancelling the await before its turn means it never runs."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))


class Lanes:
    """A lane for small calls and one for large: a call over ``large_flops`` estimated FLOPs takes the large one."""

    def __init__(self, large_flops: int, threads: ComputeThreads = THREADS,
                 observe: Callable[[str], Callable[[float, float], None]] | None = None) -> None:
        self.large_flops = large_flops
        self.small = Lane(threads, observe("small") if observe else None, "small")
        self.large = Lane(threads, observe("large") if observe else None, "large")

    def for_cost(self, flops: int) -> Lane:
        return self.large if flops > self.large_flops else self.small


def start_on_compute_thread(fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
    """``fn(*args, **kwargs)`` started on a compute thread and left to run (a training run); what it
    returns or raises is dropped, so ``fn`` handles its own errors."""
    THREADS.submit(fn, *args, **kwargs)


__all__ = ["THREADS", "ComputeThreads", "Lane", "Lanes", "start_on_compute_thread"]
