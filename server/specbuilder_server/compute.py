"""The threads that run the server's torch work: as few as the work needs, so OpenMP stays fast.

libgomp, the OpenMP runtime of torch's Linux wheels, gives every thread that enters a parallel
region a team of worker threads of its own, kept until that thread exits. Once a process has
more OpenMP threads than CPUs (two teams of 2 on 2 CPUs already), libgomp stops letting idle
workers spin between parallel regions and puts them to sleep: every operation then pays a
wake-up, in every team, even while the other teams sit idle. Measured on the 2-core box in one
process: the MLP 784-256-256-10's forward went from 5.1 ms to 9.3 ms, and a training run from
872 ms to 1,082 ms, as soon as a second thread had run one parallel region; both came back when
that thread ended (with the box quiet: under heavy load from other processes a spinning worker
loses its core, and training then did better with two teams; docs/benchmarks.md). A server that
ran each call's forward on whichever gRPC thread took it held 8 teams after 8 concurrent
clients (forward 10.7-11.1 ms against 5.7-6.0 ms here), and each training pool thread kept another.

So all of it runs here. Forwards and statistics (``on_compute_thread``) take turns, one at a
time — calls on one model were serialized by its lock already, and on a CPU concurrent
forwards only split the same cores. Training runs (``start_on_compute_thread``) run alongside.
Each piece of work goes to the idle thread, or to a new one when none is idle; a thread that
finishes while another is idle ends, and its team with it. So the server holds one team when it
does one thing at a time, whatever it did before: a training run after a burst of Evaluate calls
runs on the thread that served them. Work done at once still makes as many teams as it needs
(an Evaluate during a training run starts a second thread, once).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
Task = Callable[[], None]


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
        self._turn = threading.Lock()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """``fn(*args, **kwargs)`` on the idle thread, or on a new one; its future."""
        future: Future[T] = Future()

        def task() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(error)

        with self._lock:
            worker, self._idle = self._idle, None
        if worker is None:
            worker = _Worker(self)
            worker.start()
        worker.give(task)
        return future

    def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on a compute thread, one such call at a time; waits, returns its
        result or raises its exception. ``fn`` must not call this itself (it would wait for itself)."""
        with self._turn:
            return self.submit(fn, *args, **kwargs).result()

    def rested(self, worker: _Worker) -> bool:
        """After a task: ``worker`` becomes the idle thread (True), or ends when there is one already (False)."""
        with self._lock:
            if self._idle is not None:
                return False
            self._idle = worker
            return True


THREADS = ComputeThreads()
"""The process's compute threads, shared by every server in it: libgomp counts its threads per process."""


def on_compute_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``THREADS.run``: a forward or statistics, in turn with every other."""
    return THREADS.run(fn, *args, **kwargs)


def start_on_compute_thread(fn: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
    """``fn(*args, **kwargs)`` started on a compute thread and left to run (a training run); what it
    returns or raises is dropped, so ``fn`` handles its own errors."""
    THREADS.submit(fn, *args, **kwargs)


__all__ = ["THREADS", "ComputeThreads", "on_compute_thread", "start_on_compute_thread"]
