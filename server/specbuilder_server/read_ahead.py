"""A stream's batches read, checked and started ahead of the one being answered, answered in order.

Reading a stream's next message only once the current batch is answered leaves the compute
thread idle for a round of the event loop per batch (the message read, parsed, its compute
handed over). ``ReadAhead`` reads on while the current batch computes: a task of its own takes
each message from the stream (``next_message``) and hands it to ``start`` (the servicer's: check
it and submit its compute to a lane), so the lane runs the next batch the moment the current one
ends. At most ``depth`` batches are started whose answers have not been taken (``next``), each
holding its message's bytes until it has computed: the memory a stream holds stays flat however
long it runs and however slowly its client reads.

Answers are taken in the order the messages came (``next``); a message that fails its check,
or fails to arrive (idle, malformed), takes its place in that order, so the answers before it
still go out. A stream whose client is gone (``ClientGone``) stops everything at once.
``close`` stops what was started and not answered, and returns only once none of it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from specbuilder_server.compute_budget import Budget, Stopped
from specbuilder_server.errors import ClientGone

M = TypeVar("M")
T = TypeVar("T")
STOPPED = "the stream ended before this batch was answered"


@dataclass(frozen=True)
class Started(Generic[T]):
    """One batch's work, submitted to a compute lane: its future and the budget that stops it."""

    future: Future[T]
    budget: Budget

    def stop(self) -> None:
        """Stop the work: never started if it still waits for its turn, stopped at its next budget check if it runs."""
        self.budget.cancel(STOPPED)
        self.future.cancel()


class ReadAhead(Generic[M, T]):
    """Messages from ``next_message`` (None: the stream's end), each started by ``start(message, index)``
    as soon as fewer than ``depth`` started ones wait to be taken; on the event loop only."""

    def __init__(self, next_message: Callable[[], Awaitable[M | None]], start: Callable[[M, int], Started[T]], depth: int) -> None:
        self._next_message = next_message
        self._start = start
        self._room = asyncio.Semaphore(depth)
        self._ready: asyncio.Queue[Started[T] | Exception | None] = asyncio.Queue()
        self._started: deque[Started[T]] = deque()
        """Work started and not yet answered, oldest first."""
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        index = 0
        try:
            while True:
                await self._room.acquire()
                message = await self._next_message()
                if message is None:
                    self._ready.put_nowait(None)
                    return
                started = self._start(message, index)
                del message  # its bytes are the started work's to hold, and to let go of
                self._started.append(started)
                self._ready.put_nowait(started)
                index += 1
        except ClientGone as gone:
            self._stop_all()
            self._ready.put_nowait(gone)
        except Exception as error:  # noqa: BLE001 - the stream fails here, after the answers before it
            self._ready.put_nowait(error)

    async def next(self) -> T | None:
        """The next batch's answer, once computed; None at the stream's end. Raises what the message
        in this place failed with, what its compute raised, or ``Stopped`` if it was stopped before its turn came."""
        item = await self._ready.get()
        if item is None:
            return None
        if isinstance(item, Exception):
            raise item
        try:
            answer = await asyncio.wrap_future(item.future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this call itself is being cancelled
            raise Stopped(grpc.StatusCode.CANCELLED, STOPPED) from None  # stopped before its turn came
        self._started.popleft()
        self._room.release()
        return answer

    def _stop_all(self) -> None:
        for started in self._started:
            started.stop()

    async def close(self) -> None:
        """Stop reading and stop every batch started and not answered; return once none of them runs."""
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._stop_all()
        running = [asyncio.wrap_future(started.future) for started in self._started if not started.future.done()]
        self._started.clear()
        if running:
            await asyncio.wait(running)
        for stopped in running:
            if not stopped.cancelled():
                stopped.exception()  # what a stopped batch raised is of no interest: the stream has ended


__all__ = ["ReadAhead", "Started"]
