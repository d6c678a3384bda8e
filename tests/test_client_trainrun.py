"""``TrainRun`` reads a Train stream the same whether it is iterated or only asked for its result.

The stream here is what the server sends for a real run (``responses.train_messages`` over the
events of ``train_events``), handed to ``TrainRun`` as its call: the client's reading is tested
on its own, without a server between.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from specbuilder_server import responses

from specbuilder.spec import parse_spec
from specbuilder.training import TrainConfig, train_events
from specbuilder_client import EpochEvent, StatsEvent, TrainFinished, TrainRun, TrainStarted
from specbuilder_wire.v1 import service_pb2

SPEC = parse_spec({"name": "tiny", "input_shape": [2], "layers": [{"type": "linear", "out_features": 8, "activation": "tanh"}, {"type": "linear", "out_features": 2}]})
RUN_ID = "a" * 32


class Cancelled(grpc.RpcError):
    """What gRPC raises from a call the client cancelled."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED


class Stream:
    """A Train call's messages, ending cancelled after the first ``cut`` of them if ``cut`` is given."""

    def __init__(self, messages: list[service_pb2.TrainEvent], cut: int | None = None) -> None:
        self._messages, self._cut = messages, cut

    def __iter__(self) -> Iterator[service_pb2.TrainEvent]:
        yield from self._messages[: self._cut]
        if self._cut is not None:
            raise Cancelled()

    def cancel(self) -> None:
        """Nothing to stop: the stream ends at ``cut``."""


@pytest.fixture(scope="module")
def messages() -> list[service_pb2.TrainEvent]:
    """A run of 4 epochs, statistics every 3 steps, sent as the server sends it: started, three bursts, finished."""
    events = list(train_events(SPEC, "spirals", TrainConfig(epochs=4, device="cpu", stats_every=3)))
    middle = events[1:-1]
    thirds = [middle[: len(middle) // 3], middle[len(middle) // 3 : 2 * len(middle) // 3], middle[2 * len(middle) // 3 :]]
    return [message for burst in ([events[0]], *thirds, [events[-1]]) for message in responses.train_messages(RUN_ID, burst)]


def test_the_result_is_the_same_read_event_by_event_or_not_at_all(messages: list[service_pb2.TrainEvent]) -> None:
    iterated = TrainRun(Stream(messages))
    events = list(iterated)
    assert isinstance(events[0], TrainStarted) and isinstance(events[-1], TrainFinished)
    assert [e.epoch for e in events if isinstance(e, EpochEvent)] == [1, 2, 3, 4]
    assert sum(isinstance(e, StatsEvent) for e in events) > 3
    skimmed = TrainRun(Stream(messages))
    assert skimmed.result() == iterated.result()
    assert skimmed.run_id == RUN_ID and [m.epoch for m in skimmed.history] == [1, 2, 3, 4]


def test_a_result_asked_for_midway_reads_the_rest_for_it(messages: list[service_pb2.TrainEvent]) -> None:
    run = TrainRun(Stream(messages))
    first = [next(iter(run)) for _ in range(3)]  # started and the first burst's first two events
    assert isinstance(first[0], TrainStarted)
    assert run.result() == TrainRun(Stream(messages)).result()


@pytest.mark.parametrize("read_first", [True, False], ids=["iterated", "skimmed"])
def test_a_cancelled_run_returns_its_last_window_read_or_skimmed(messages: list[service_pb2.TrainEvent], read_first: bool) -> None:
    """Cancelled after the second burst: the outcome carries the statistics of the last window that came."""
    windows = [item.stats for message in messages[:3] for item in message.progress.items if item.HasField("stats")]
    run = TrainRun(Stream(messages, cut=3))
    run.cancel()
    if read_first:
        list(run)
    result = run.result()
    assert (result.status, result.steps, result.model_id) == ("cancelled", None, RUN_ID)
    assert len(result.history) == sum(item.HasField("epoch") for message in messages[:3] for item in message.progress.items)
    assert [(s.name, s.mean, s.count) for s in result.stats] == [(s.name, s.mean, s.count) for s in windows[-1].stats]
