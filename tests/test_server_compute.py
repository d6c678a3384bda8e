"""The server's compute threads and lanes: work done one piece at a time stays on one thread (one
OpenMP team); a lane runs its tasks one at a time in order; a small call never waits behind a large one."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest
from server_helpers import wait_for
from specbuilder_server.compute_lanes import ComputeThreads, Lane, Lanes


def test_work_that_comes_one_piece_at_a_time_runs_on_one_thread() -> None:
    pool = ComputeThreads()
    lane = Lane(pool)
    first = lane.submit(threading.current_thread).result()
    assert first is not threading.current_thread()
    assert pool.submit(threading.current_thread).result() is first  # a training run after Evaluate calls
    assert lane.submit(threading.current_thread).result() is first


def test_work_at_the_same_time_gets_a_thread_each_and_afterwards_one_is_kept() -> None:
    pool = ComputeThreads()
    started, release = threading.Event(), threading.Event()

    def long_run() -> threading.Thread:
        started.set()
        release.wait()
        return threading.current_thread()

    running = pool.submit(long_run)
    started.wait()
    beside = Lane(pool).submit(threading.current_thread).result()  # an Evaluate during a training run
    release.set()
    first = running.result()
    assert beside is not first
    wait_for(lambda: not first.is_alive(), "the thread that finished last to end")
    assert beside.is_alive() and pool.submit(threading.current_thread).result() is beside


def test_a_lane_runs_its_tasks_one_at_a_time_in_the_order_they_came() -> None:
    lane = Lane(ComputeThreads())
    release = threading.Event()
    order: list[int] = []
    running = 0
    most = 0

    def task(index: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if index == 0:
            release.wait()
        order.append(index)
        running -= 1

    futures = [lane.submit(task, index) for index in range(20)]
    release.set()
    for future in futures:
        future.result(timeout=30)
    assert order == list(range(20)) and most == 1


def test_a_task_cancelled_while_it_waits_never_runs() -> None:
    lane = Lane(ComputeThreads())
    release, ran = threading.Event(), threading.Event()
    blocker = lane.submit(release.wait)
    waiting: Future[None] = lane.submit(ran.set)
    assert waiting.cancel()
    release.set()
    blocker.result(timeout=30)
    assert lane.submit(lambda: None).result(timeout=30) is None and not ran.is_set()


def test_a_small_call_runs_while_a_large_one_holds_its_lane() -> None:
    lanes = Lanes(large_flops=1000, threads=ComputeThreads())
    release = threading.Event()
    large = lanes.for_cost(10_000).submit(release.wait, 60)
    assert lanes.for_cost(10).submit(lambda: "small").result(timeout=30) == "small"
    assert not large.done()
    release.set()
    assert large.result(timeout=30)


def test_results_and_exceptions_reach_the_awaiting_caller() -> None:
    lane = Lane(ComputeThreads())

    async def both() -> int:
        with pytest.raises(ZeroDivisionError):
            await lane.run(lambda: 1 / 0)
        return await lane.run(sum, [1, 2], start=3)

    assert asyncio.run(both()) == 6
