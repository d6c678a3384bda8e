"""``ReadAhead``: a stream's batches started ahead of the one being answered, at most ``depth`` of them,
answered in order; a failure takes its place in that order; a client gone stops everything; ``close``
stops what was started and returns only once none of it runs. Real compute threads (a ``Lane``),
a fake stream of messages."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from specbuilder_server.compute_budget import Budget, Stopped
from specbuilder_server.compute_lanes import Lane
from specbuilder_server.errors import ClientGone, RequestError, invalid
from specbuilder_server.read_ahead import ReadAhead, Started

Message = Any


class Stream:
    """Messages handed out one by one (an exception in the list is raised in its place), counting how many were taken."""

    def __init__(self, messages: list[Message]) -> None:
        self._messages = list(messages)
        self.taken = 0

    async def next(self) -> Message | None:
        await asyncio.sleep(0)
        if self.taken == len(self._messages):
            return None
        message = self._messages[self.taken]
        self.taken += 1
        if isinstance(message, Exception):
            raise message
        return message


class Work:
    """Starts each message on a lane: the work waits for its own gate, then returns its message doubled."""

    def __init__(self) -> None:
        self.lane = Lane()
        self.gates: dict[int, threading.Event] = {}
        self.ran: list[int] = []
        self.budgets: list[Budget] = []

    def start(self, message: Message, index: int) -> Started[int]:
        if message == "bad":
            raise invalid(f"batch[{index}]", "not a batch")
        gate = self.gates.setdefault(index, threading.Event())
        budget = Budget(None, float("inf"))
        self.budgets.append(budget)

        def compute() -> int:
            while not gate.wait(0.01):
                budget.check()
            self.ran.append(index)
            return int(message) * 2

        return Started(self.lane.submit(compute), budget)

    def open(self, *indexes: int) -> None:
        for index in indexes:
            self.gates.setdefault(index, threading.Event()).set()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def settle() -> None:
    """Let the reader task run as far as it can."""
    for _ in range(20):
        await asyncio.sleep(0.01)


def test_answers_come_in_order_and_at_most_depth_batches_are_started_ahead() -> None:
    async def check() -> None:
        stream, work = Stream([1, 2, 3, 4, 5]), Work()
        ahead = ReadAhead(stream.next, work.start, depth=2)
        await settle()
        assert stream.taken == 2  # the one computing and the next; the third waits for an answer
        work.open(0, 1, 2, 3, 4)
        answers = [await ahead.next() for _ in range(5)]
        assert answers == [2, 4, 6, 8, 10] and work.ran == [0, 1, 2, 3, 4]
        assert await ahead.next() is None
        await ahead.close()

    run(check)


def test_a_message_that_fails_takes_its_place_after_the_answers_before_it() -> None:
    async def check() -> None:
        for failure in ("bad", RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "idle")):
            stream, work = Stream([1, 2, failure, 4]), Work()
            work.open(0, 1, 2, 3)
            ahead = ReadAhead(stream.next, work.start, depth=2)
            assert [await ahead.next(), await ahead.next()] == [2, 4]
            with pytest.raises(RequestError):
                await ahead.next()
            await ahead.close()
            assert stream.taken == 3  # nothing is read after the failure

    run(check)


def test_a_client_gone_stops_the_batches_started_at_once() -> None:
    async def check() -> None:
        stream, work = Stream([1, 2, ClientGone("the connection ended")]), Work()
        ahead = ReadAhead(stream.next, work.start, depth=3)
        await settle()
        assert all(budget._cancelled for budget in work.budgets)  # the one running stops at its next check
        with pytest.raises(Stopped):
            await ahead.next()
        await ahead.close()
        assert work.ran == []

    run(check)


def test_close_stops_what_waits_and_returns_once_nothing_runs() -> None:
    async def check() -> None:
        stream, work = Stream([1, 2, 3, 4]), Work()
        ahead = ReadAhead(stream.next, work.start, depth=2)
        await settle()
        started = list(work.budgets)
        await ahead.close()
        assert len(started) == 2 and all(budget._cancelled for budget in started)
        assert work.lane.submit(lambda: "idle").result(timeout=5) == "idle"  # the lane is free again
        assert work.ran == [] and stream.taken == 2

    run(check)
