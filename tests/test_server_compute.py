"""The server's compute threads: work done one piece at a time stays on one thread (one OpenMP team)."""

from __future__ import annotations

import threading

import pytest
from server_helpers import wait_for
from specbuilder_server.compute import ComputeThreads


def test_work_that_comes_one_piece_at_a_time_runs_on_one_thread() -> None:
    pool = ComputeThreads()
    first = pool.run(threading.current_thread)
    assert first is not threading.current_thread()
    assert pool.submit(threading.current_thread).result() is first  # a training run after Evaluate calls
    assert pool.run(threading.current_thread) is first


def test_work_at_the_same_time_gets_a_thread_each_and_afterwards_one_is_kept() -> None:
    pool = ComputeThreads()
    started, release = threading.Event(), threading.Event()

    def long_run() -> threading.Thread:
        started.set()
        release.wait()
        return threading.current_thread()

    running = pool.submit(long_run)
    started.wait()
    beside = pool.run(threading.current_thread)  # an Evaluate during a training run
    release.set()
    first = running.result()
    assert beside is not first
    wait_for(lambda: not first.is_alive(), "the thread that finished last to end")
    assert beside.is_alive() and pool.run(threading.current_thread) is beside


def test_results_and_exceptions_reach_the_caller() -> None:
    pool = ComputeThreads()
    with pytest.raises(ZeroDivisionError):
        pool.run(lambda: 1 / 0)
    assert pool.run(sum, [1, 2], start=3) == 6
