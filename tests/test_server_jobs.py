"""Training jobs hand their events to the Train call in bursts, in order, and never hold back the end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from specbuilder_server import convert
from specbuilder_server.jobs import Job, TrainingJobs

from specbuilder.spec import parse_spec
from specbuilder.store import ModelStore
from specbuilder.training import Event, TrainConfig

SPEC = parse_spec({"name": "tiny", "input_shape": [2], "layers": [{"type": "linear", "out_features": 8, "activation": "tanh"}, {"type": "linear", "out_features": 3}]})
LONG = 600.0
"""An interval no test waits out: where a burst must come at once, a hang shows it did not."""


def start(tmp_path: Path, epochs: int) -> Job:
    jobs = TrainingJobs(ModelStore(tmp_path / "store"), capacity=1, max_seconds=None)
    return jobs.start(SPEC, "spirals", TrainConfig(epochs=epochs, device="cpu", stats_every=2), "tiny")


def rest_in_thread(bursts: Iterator[list[Event]]) -> tuple[threading.Thread, list[list[Event]]]:
    """The remaining bursts, read on a thread of its own, so the test can see whether it is still waiting."""
    got: list[list[Event]] = []
    thread = threading.Thread(target=lambda: got.extend(bursts), daemon=True)
    thread.start()
    return thread, got


def test_a_run_that_ends_is_delivered_whole_and_in_order_without_waiting_for_the_interval(tmp_path: Path) -> None:
    job = start(tmp_path, epochs=3)
    bursts = job.bursts(LONG)
    first = next(bursts)  # at once, with whatever the run made before it was asked for
    thread, rest = rest_in_thread(bursts)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the run's end waited for the delivery interval"
    events = first + [event for burst in rest for event in burst]
    types = [event.type for event in events]
    assert types[0] == "started" and types[-1] == "finished" and types.count("epoch") == 3 and "stats" in types
    steps = [event.step if event.type == "stats" else event.metrics.step for event in events[1:-1]]  # type: ignore[union-attr]
    assert steps == sorted(steps)


def test_events_after_the_first_wait_for_the_interval_and_come_together(tmp_path: Path) -> None:
    job = start(tmp_path, epochs=100_000)
    bursts = job.bursts(LONG)
    assert next(bursts)[0].type == "started"  # at once, with whatever the run made before it was asked for
    thread, rest = rest_in_thread(bursts)
    thread.join(timeout=0.5)
    assert thread.is_alive() and not rest, "a burst came before the interval had passed"
    job.cancel("the test is done")
    thread.join(timeout=60)
    assert not thread.is_alive() and len(rest) == 1, "everything since the first burst came in one"
    (burst,) = rest
    assert burst[-1].type == "finished" and burst[-1].status == "cancelled"  # type: ignore[union-attr]
    assert any(event.type == "epoch" for event in burst) and any(event.type == "stats" for event in burst)


def test_without_an_interval_each_burst_is_what_was_there(tmp_path: Path) -> None:
    job = start(tmp_path, epochs=100_000)
    bursts = job.bursts()
    assert next(bursts)[0].type == "started"  # at once, with whatever the run made before it was asked for
    assert next(bursts)
    job.cancel("the test is done")
    assert [event.type for burst in bursts for event in burst][-1] == "finished"


def test_what_stops_a_run_before_it_starts_is_raised(tmp_path: Path) -> None:
    jobs = TrainingJobs(ModelStore(tmp_path / "store"), capacity=1, max_seconds=None)
    job = jobs.start(SPEC, "no-such-dataset", TrainConfig(device="cpu"), "tiny")
    with pytest.raises(Exception, match="no-such-dataset"):
        next(job.bursts(LONG))


def test_a_burst_is_one_progress_message_between_started_and_finished(tmp_path: Path) -> None:
    job = start(tmp_path, epochs=2)
    events = [event for burst in job.bursts() for event in burst]
    messages = convert.train_messages("run", events)
    assert [m.WhichOneof("event") for m in messages] == ["started", "progress", "finished"]
    items = messages[1].progress.items
    assert [item.WhichOneof("item") for item in items] == [event.type for event in events[1:-1]]
    assert [item.epoch.epoch for item in items if item.HasField("epoch")] == [1, 2]
    assert {m.run_id for m in messages} == {"run"}
