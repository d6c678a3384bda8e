"""Training jobs hand their events to the Train call in bursts, in order, and never hold back the end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from specbuilder_server.jobs import Job, TrainingJobs

from specbuilder.spec import parse_spec
from specbuilder.store import ModelStore
from specbuilder.training import TrainConfig

SPEC = parse_spec({"name": "tiny", "input_shape": [2], "layers": [{"type": "linear", "out_features": 8, "activation": "tanh"}, {"type": "linear", "out_features": 3}]})
LONG = 600.0
"""An interval no test waits out: where a burst must come at once, a hang shows it did not."""


def start(tmp_path: Path, epochs: int) -> Job:
    jobs = TrainingJobs(ModelStore(tmp_path / "store"), capacity=1, max_seconds=None)
    return jobs.start(SPEC, "spirals", TrainConfig(epochs=epochs, device="cpu", stats_every=2), "tiny")


def next_in_thread(events: Iterator[object]) -> tuple[threading.Thread, list[object]]:
    """``next(events)`` on a thread of its own, so the test can see whether it is still waiting."""
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.extend(events), daemon=True)
    thread.start()
    return thread, got


def test_a_run_that_ends_is_delivered_whole_and_in_order_without_waiting_for_the_interval(tmp_path: Path) -> None:
    job = start(tmp_path, epochs=3)
    events = job.events(LONG)
    assert next(events).type == "started"  # the first event comes at once
    thread, rest = next_in_thread(events)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the run's end waited for the delivery interval"
    types = [event.type for event in rest]  # type: ignore[attr-defined]
    assert types[-1] == "finished" and types.count("epoch") == 3 and "stats" in types
    epochs = [event.metrics.epoch for event in rest if event.type == "epoch"]  # type: ignore[attr-defined]
    assert epochs == sorted(epochs)


def test_events_after_the_first_wait_for_the_interval_and_come_together(tmp_path: Path) -> None:
    job = start(tmp_path, epochs=100_000)
    events = job.events(LONG)
    assert next(events).type == "started"
    thread, rest = next_in_thread(events)
    thread.join(timeout=0.5)
    assert thread.is_alive() and not rest, "an event came before the interval had passed"
    job.cancel("the test is done")
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert rest[-1].type == "finished" and rest[-1].status == "cancelled"  # type: ignore[attr-defined]
    assert any(event.type == "epoch" for event in rest)  # type: ignore[attr-defined]


def test_without_an_interval_each_event_comes_as_it_is_made(tmp_path: Path) -> None:
    job = start(tmp_path, epochs=100_000)
    events = job.events()
    assert [next(events).type, next(events).type] == ["started", "stats"]
    job.cancel("the test is done")
    assert [event.type for event in events][-1] == "finished"


def test_what_stops_a_run_before_it_starts_is_raised(tmp_path: Path) -> None:
    jobs = TrainingJobs(ModelStore(tmp_path / "store"), capacity=1, max_seconds=None)
    job = jobs.start(SPEC, "no-such-dataset", TrainConfig(device="cpu"), "tiny")
    with pytest.raises(Exception, match="no-such-dataset"):
        next(job.events(LONG))
