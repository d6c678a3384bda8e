"""Training jobs hand their events to the Train call in bursts, in order, and never hold back the end;
a call that stops taking them costs a bounded buffer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from specbuilder_server import responses
from specbuilder_server.jobs import Job, TrainingJobs

from specbuilder.spec import parse_spec
from specbuilder.store import ModelStore
from specbuilder.training import Event, TrainConfig

SPEC = parse_spec({"name": "tiny", "input_shape": [2], "layers": [{"type": "linear", "out_features": 8, "activation": "tanh"}, {"type": "linear", "out_features": 3}]})
LONG = 600.0
"""An interval no test waits out: where a burst must come at once, a hang shows it did not."""


def start(tmp_path: Path, epochs: int, max_pending: int = 10_000) -> tuple[Job, ModelStore]:
    store = ModelStore(tmp_path / "store")
    jobs = TrainingJobs(store, capacity=1, max_seconds=None, max_pending=max_pending)
    return jobs.start(SPEC, "spirals", TrainConfig(epochs=epochs, device="cpu", stats_every=2), "tiny"), store


async def rest(bursts: AsyncIterator[list[Event]]) -> list[list[Event]]:
    return [burst async for burst in bursts]


def test_a_run_that_ends_is_delivered_whole_and_in_order_without_waiting_for_the_interval(tmp_path: Path) -> None:
    job, _ = start(tmp_path, epochs=3)

    async def read() -> list[Event]:
        bursts = job.bursts(LONG)
        first = await asyncio.wait_for(anext(bursts), 60)  # at once, with whatever the run made before it was asked for
        later = await asyncio.wait_for(rest(bursts), 60)  # "the run's end waited for the delivery interval" if this times out
        return first + [event for burst in later for event in burst]

    events = asyncio.run(read())
    types = [event.type for event in events]
    assert types[0] == "started" and types[-1] == "finished" and types.count("epoch") == 3 and "stats" in types
    steps = [event.step if event.type == "stats" else event.metrics.step for event in events[1:-1]]  # type: ignore[union-attr]
    assert steps == sorted(steps)


def test_events_after_the_first_wait_for_the_interval_and_come_together(tmp_path: Path) -> None:
    job, _ = start(tmp_path, epochs=100_000)

    async def read() -> list[list[Event]]:
        bursts = job.bursts(LONG)
        assert (await anext(bursts))[0].type == "started"  # at once, with whatever the run made before it was asked for
        later = asyncio.ensure_future(rest(bursts))
        deadline = time.monotonic() + 60
        while len(job.outbox) < 8:  # epochs and statistics windows wait, undelivered
            assert time.monotonic() < deadline, "the run made no progress"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert not later.done(), "a burst came before the interval had passed"
        job.cancel("the test is done")
        return await asyncio.wait_for(later, 60)

    later = asyncio.run(read())
    assert len(later) == 1, "everything since the first burst came in one"
    (burst,) = later
    assert burst[-1].type == "finished" and burst[-1].status == "cancelled"  # type: ignore[union-attr]
    assert any(event.type == "epoch" for event in burst) and any(event.type == "stats" for event in burst)


def test_without_an_interval_each_burst_is_what_was_there(tmp_path: Path) -> None:
    job, _ = start(tmp_path, epochs=100_000)

    async def read() -> list[Event]:
        bursts = job.bursts()
        assert (await anext(bursts))[0].type == "started"  # at once, with whatever the run made before it was asked for
        assert await anext(bursts)
        job.cancel("the test is done")
        return [event for burst in await asyncio.wait_for(rest(bursts), 60) for event in burst]

    assert asyncio.run(read())[-1].type == "finished"


def test_what_stops_a_run_before_it_starts_is_raised(tmp_path: Path) -> None:
    jobs = TrainingJobs(ModelStore(tmp_path / "store"), capacity=1, max_seconds=None, max_pending=100)
    job = jobs.start(SPEC, "no-such-dataset", TrainConfig(device="cpu"), "tiny")
    with pytest.raises(Exception, match="no-such-dataset"):
        asyncio.run(asyncio.wait_for(anext(job.bursts(LONG)), 60))


def test_a_run_whose_events_nobody_takes_is_cancelled_past_the_buffer_limit(tmp_path: Path) -> None:
    job, store = start(tmp_path, epochs=100_000, max_pending=50)
    assert job.done.wait(60), "a run nobody reads kept going"
    assert job.run_id
    record = store.get(job.run_id)
    assert record.status == "cancelled" and "max_pending_events" in (record.reason or "") and "stopped reading" in (record.reason or "")


def test_a_run_cancelled_before_its_first_step_keeps_no_weights(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    jobs = TrainingJobs(store, capacity=1, max_seconds=None, max_pending=100)
    job = jobs.start(SPEC, "spirals", TrainConfig(epochs=5, device="cpu"), "tiny")
    job.cancel("cancelled at once")
    assert job.done.wait(60)
    record = store.get(job.run_id)
    assert record.status == "cancelled" and not record.has_weights


def test_a_burst_is_one_progress_message_between_started_and_finished(tmp_path: Path) -> None:
    job, _ = start(tmp_path, epochs=2)
    events = [event for burst in asyncio.run(asyncio.wait_for(rest(job.bursts()), 60)) for event in burst]
    messages = responses.train_messages("run", events)
    assert [m.WhichOneof("event") for m in messages] == ["started", "progress", "finished"]
    items = messages[1].progress.items
    assert [item.WhichOneof("item") for item in items] == [event.type for event in events[1:-1]]
    assert [item.epoch.epoch for item in items if item.HasField("epoch")] == [1, 2]
    assert {m.run_id for m in messages} == {"run"}
