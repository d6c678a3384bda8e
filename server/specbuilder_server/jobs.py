"""Training runs as jobs: a bounded number, a store record per run, events handed to the Train call.

A job runs ``train_events`` on a compute thread (``compute_lanes``: the idle one that served Evaluate
calls, if any, so the process keeps one OpenMP team). Its record is created in the store as
soon as the run has started (the spec, config and data were accepted), so ``GetModel`` shows it
``running``; progress is written as epochs end, and the outcome, weights included, before the
``finished`` event is handed on, so a client that sees ``finished`` finds the record final.
The Train call receives the events in order, the first at once and the rest in bursts every
``EVENT_INTERVAL`` (the run's end without delay), each burst's epochs and statistics windows in one
message: one wake-up and one message per burst, not per event. The call waits for them on the
event loop, holding no thread; a run whose call has not taken ``max_pending`` of its events (the
client stopped reading) is cancelled, so a reader that stops costs a bounded buffer.
Validation errors raised before the start leave nothing in the store and reach the caller.
A started run whose outcome cannot be stored (the disk is full, a write fails) is recorded
``failed`` and ends with ``RunFailed``, which the Train call answers as a finished event.

A job stops within one step when its ``CancelToken`` is cancelled: by the Train call ending
early (the client cancelled, its deadline passed), by the server's time limit, by its client not
reading, or by the server shutting down. A stopped run is stored ``cancelled`` with its reason,
and without weights if it was stopped before its first step (it learned nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from specbuilder.datasets import Dataset
from specbuilder.spec import ModelSpec
from specbuilder.store import ModelStore, QuotaExceeded
from specbuilder.training import CancelToken, Event, TrainConfig, train_events
from specbuilder_server.compute_lanes import start_on_compute_thread
from specbuilder_server.errors import exhausted

log = logging.getLogger("specbuilder_server")

PROGRESS_INTERVAL = 0.5
"""Seconds between progress writes (history, latest statistics) to the store; the first and the outcome are always written."""
EVENT_INTERVAL = 0.1
"""Seconds between deliveries of a run's events to its Train call (``Job.bursts``). Each message
sent takes the GIL from the training thread twice (the handler, then gRPC's poller on the send's
completion) and wakes the client, and while training keeps every core busy each one stalls the
run; bursts this far apart keep that cost small (docs/benchmarks.md, "Training events come in
bursts"), and a tenth of a second is as often as a progress bar redraws."""
_END = object()


class RunFailed(Exception):
    """A started run ended without its outcome stored; the store records it ``failed`` with ``reason``."""

    def __init__(self, reason: str, steps: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.steps = steps


class Outbox:
    """A run's events on their way from its training thread to its Train call on the event loop."""

    def __init__(self, max_pending: int, on_overflow: Callable[[int], None]) -> None:
        self._items: deque[object] = deque()
        self._lock = threading.Lock()
        self._max_pending = max_pending
        self._on_overflow = on_overflow
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event, bool] | None = None
        """The loop and event a ``take`` waits on, and whether any item wakes it (else only the last)."""
        self._closed = False

    def put(self, item: object, *, last: bool = False) -> None:
        """Hand ``item`` on (from any thread), ``last`` if nothing follows; past ``max_pending`` items not yet
        taken, ``on_overflow`` is told how many."""
        with self._lock:
            self._items.append(item)
            self._closed = self._closed or last
            pending, waiter = len(self._items), self._waiter
        if waiter is not None and (waiter[2] or last):
            loop, event, _ = waiter
            loop.call_soon_threadsafe(event.set)
        if pending > self._max_pending:
            self._on_overflow(pending)

    def __len__(self) -> int:
        """Items handed on and not taken yet."""
        with self._lock:
            return len(self._items)

    async def take(self, hold: float = 0.0) -> list[object]:
        """Every item handed on so far, after ``hold`` seconds (cut short when the last item comes), waiting
        on the event loop until there is one."""
        until = time.monotonic() + hold
        while True:
            with self._lock:
                left = until - time.monotonic()
                if self._items and (left <= 0 or self._closed):
                    items = list(self._items)
                    self._items.clear()
                    self._waiter = None
                    return items
                event = asyncio.Event()
                self._waiter = (asyncio.get_running_loop(), event, left <= 0)
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), left)
            else:
                await event.wait()


@dataclass(eq=False)
class Job:
    """One training run: what to train, how to stop it, and the events it has produced so far."""

    spec: ModelSpec
    data: str | Dataset
    config: TrainConfig
    name: str
    max_pending: int
    cancel_token: CancelToken = field(default_factory=CancelToken)
    run_id: str = ""
    """The store record's id, set when the run has started."""
    done: threading.Event = field(default_factory=threading.Event)
    outbox: Outbox = field(init=False)
    """Events, then an exception if one stopped the run, then the end mark: written by the job, read by ``bursts``."""

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.max_pending, self._unread)

    def _unread(self, pending: int) -> None:
        self.cancel(f"its Train call left {pending:,} events unread, over this server's limit (max_pending_events): the client stopped reading")

    def cancel(self, reason: str) -> None:
        """Stop the run before its next step; the first reason given is the one recorded."""
        self.cancel_token.cancel(reason)

    async def bursts(self, interval: float = 0.0) -> AsyncIterator[list[Event]]:
        """The run's events in order, in bursts at most every ``interval`` seconds: the first at once,
        each later one with everything that came since; the run's end never waits for the interval.
        Raises what stopped the run (a bad config or bad data before it started, ``RunFailed`` after),
        once the events before it are delivered."""
        due = 0.0
        while True:
            events: list[Event] = []
            for item in await self.outbox.take(due - time.monotonic()):  # the end mark, and an exception before it, come last
                if item is _END or isinstance(item, BaseException):
                    if events:
                        yield events
                    if item is _END:
                        return
                    raise item
                events.append(item)  # type: ignore[arg-type]
            due = time.monotonic() + interval
            yield events


class TrainingJobs:
    """At most ``capacity`` runs at once; one more is refused (RESOURCE_EXHAUSTED), never queued."""

    def __init__(self, store: ModelStore, capacity: int, max_seconds: float | None, max_pending: int) -> None:
        self._store = store
        self._max_pending = max_pending
        self._capacity = capacity
        self._max_seconds = max_seconds
        self._active: set[Job] = set()
        self._lock = threading.Lock()
        self._closed = False

    def start(self, spec: ModelSpec, data: str | Dataset, config: TrainConfig, name: str) -> Job:
        """Start a run now, or refuse: the pool is full, or the server is stopping."""
        job = Job(spec, data, config, name, self._max_pending)
        with self._lock:
            if self._closed:
                raise exhausted("the server is shutting down and starts no more training runs")
            if len(self._active) >= self._capacity:
                raise exhausted(
                    f"{len(self._active)} training runs are already going, this server's limit (max_concurrent_trains); "
                    "try again when one has finished"
                )
            self._active.add(job)
        start_on_compute_thread(self._run, job)
        return job

    def _run(self, job: Job) -> None:
        timer = None
        if self._max_seconds is not None:
            reason = f"the server's time limit of {self._max_seconds:g} s per run (max_train_seconds) was reached"
            timer = threading.Timer(self._max_seconds, job.cancel, (reason,))
            timer.daemon = True
            timer.start()
        try:
            self._train(job)
        except BaseException as error:  # noqa: BLE001 - handed to the Train call, which answers with a status
            job.outbox.put(error)
        finally:
            if timer is not None:
                timer.cancel()
            job.outbox.put(_END, last=True)
            with self._lock:
                self._active.discard(job)
            job.done.set()

    def _train(self, job: Job) -> None:
        events = train_events(job.spec, job.data, job.config, cancel=job.cancel_token)
        started = next(events)  # validation happens before the first event: nothing is stored if it fails
        record = self._store.start_run(job.spec, config=started.config, name=job.name, dataset=started.dataset)
        job.run_id = record.id
        job.outbox.put(started)
        history, stats, written, finished, steps = [], None, 0.0, False, 0
        try:
            for event in events:
                if event.type in ("epoch", "stats"):
                    if event.type == "epoch":
                        history.append(event.metrics)
                        steps = event.metrics.step
                    else:
                        stats = event.layers
                    if time.monotonic() - written >= PROGRESS_INTERVAL:
                        self._store.update_run(record.id, history=history, stats=stats)
                        written = time.monotonic()
                elif event.type == "finished":
                    result, steps = event.result, event.steps
                    self._store.finish_run(
                        record.id, result.status, result.module if result.keeps_weights else None,
                        history=result.history, stats=result.stats, reason=result.reason or None,
                    )
                    finished = True
                job.outbox.put(event)
        except QuotaExceeded as refused:  # finish_run recorded the run failed, without weights, with this as its reason
            raise RunFailed(str(refused), steps) from refused
        except BaseException as error:
            log.error("training run %s failed", record.id, exc_info=error)
            if finished:
                raise
            reason = f"{type(error).__name__}: {error}"
            self._store.finish_run(record.id, "failed", history=history, reason=reason)
            raise RunFailed(reason, steps) from error

    @property
    def running(self) -> int:
        """Runs going now."""
        return len(self._active)

    def cancel_all(self, reason: str) -> None:
        """Refuse new runs and ask every running one to stop."""
        with self._lock:
            self._closed = True
            jobs = list(self._active)
        for job in jobs:
            job.cancel(reason)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every run to end and be recorded; True if they all did."""
        deadline = time.monotonic() + timeout
        with self._lock:
            jobs = list(self._active)
        return all(job.done.wait(max(deadline - time.monotonic(), 0)) for job in jobs)
