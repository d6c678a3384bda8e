"""``TrainRun``: a Train call as events to iterate, a final ``TrainResult``, a progress bar and ``cancel()``.

Events come in the order the run made them: ``TrainStarted``, then ``EpochEvent`` and
``StatsEvent`` (the server sends them in bursts every 0.1 s, a burst's in one message),
``TrainFinished`` last. ``result()`` reads whatever is left (the statistics windows it will not
return are not made into events) and returns the run's outcome; the stored record, with its config
and timestamps, is ``client.get_model(model_id)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal, Union

import grpc
from pydantic import Field

from specbuilder_client.errors import Cancelled, from_rpc
from specbuilder_client.results import Result, layer_stats
from specbuilder_wire.results import EpochMetrics, LayerStats, status_name
from specbuilder_wire.v1 import service_pb2


class TrainStarted(Result):
    """Training began."""

    type: Literal["started"] = "started"
    run_id: str
    epochs: int
    steps_per_epoch: int
    train_samples: int
    val_samples: int


class EpochEvent(EpochMetrics):
    """An epoch finished."""

    type: Literal["epoch"] = "epoch"
    run_id: str


class StatsEvent(Result):
    """Activation statistics over the training steps up to ``step``."""

    type: Literal["stats"] = "stats"
    run_id: str
    step: int
    stats: list[LayerStats]


class TrainFinished(Result):
    """Training ended."""

    type: Literal["finished"] = "finished"
    run_id: str
    status: str = Field(description="completed, diverged, cancelled or failed")
    reason: str
    steps: int
    stats: list[LayerStats]


TrainEvent = Union[TrainStarted, EpochEvent, StatsEvent, TrainFinished]


def events_from_proto(message: service_pb2.TrainEvent) -> list[TrainEvent]:
    """One Train stream message as its events: one, or a progress message's epochs and windows in order."""
    run_id, kind = message.run_id, message.WhichOneof("event")
    if kind == "started":
        s = message.started
        return [TrainStarted(run_id=run_id, epochs=s.epochs, steps_per_epoch=s.steps_per_epoch, train_samples=s.train_samples, val_samples=s.val_samples)]
    if kind == "progress":
        return [
            EpochEvent(run_id=run_id, **EpochMetrics.from_proto(item.epoch).model_dump()) if item.HasField("epoch")
            else StatsEvent(run_id=run_id, step=item.stats.step, stats=layer_stats(item.stats.stats))
            for item in message.progress.items
        ]
    f = message.finished
    return [TrainFinished(run_id=run_id, status=status_name(f.status), reason=f.reason, steps=f.steps, stats=layer_stats(f.stats))]


class TrainResult(Result):
    """How a run ended. ``model_id`` names the stored model (and the run's record)."""

    model_id: str
    status: str = Field(description="completed, diverged, cancelled or failed")
    reason: str = Field(description="why, for anything but completed")
    steps: int | None = Field(description="optimizer steps taken; None when the client cancelled before the server's last word")
    history: list[EpochMetrics]
    stats: list[LayerStats] = Field(description="the final statistics (the last window's, after a client cancel)")


class TrainRun:
    """A training run in progress: iterate it for events, ``result()`` for the outcome, ``cancel()`` to stop it.

    As a context manager it cancels a run that is still going when the block ends.
    """

    def __init__(self, call: Any, *, progress: bool = False) -> None:
        """``call`` is the gRPC call: an iterator of ``TrainEvent`` messages with ``cancel()``."""
        self._call = call
        self._progress = progress
        self._cancelled = False
        self.run_id: str | None = None
        """The run's id (also the stored model's), from the first event on."""
        self.history: list[EpochMetrics] = []
        """Epoch metrics received so far."""
        self._window: Sequence[LayerStats | service_pb2.LayerStats] = []
        """The last statistics window received: read, or still as it came when ``result()`` skimmed it."""
        self._skimming = False
        """Set by ``result()``: windows that nobody will see are no longer turned into events."""
        self._bar: Any = None
        self._finished: TrainFinished | None = None
        self._events = self._read()

    def __iter__(self) -> Iterator[TrainEvent]:
        return self._events

    def __enter__(self) -> TrainRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._finished is None:
            self.cancel()

    def _read(self) -> Iterator[TrainEvent]:
        try:
            for message in self._call:
                self.run_id = message.run_id
                if self._skimming and message.WhichOneof("event") == "progress":
                    self._skim(message.progress)
                    continue
                for event in events_from_proto(message):
                    if isinstance(event, TrainStarted) and self._progress:
                        from tqdm.auto import tqdm

                        self._bar = tqdm(total=event.epochs, unit="epoch", desc=f"train {event.run_id[:8]}")
                    elif isinstance(event, EpochEvent):
                        self._epoch(EpochMetrics(**event.model_dump(exclude={"type", "run_id"})))
                    elif isinstance(event, StatsEvent):
                        self._window = event.stats
                    elif isinstance(event, TrainFinished):
                        self._finished = event
                    yield event
        except grpc.RpcError as error:
            if not (self._cancelled and error.code() == grpc.StatusCode.CANCELLED):
                raise from_rpc(error) from None
        finally:
            if self._bar is not None:
                self._bar.close()

    def _skim(self, progress: service_pb2.TrainProgress) -> None:
        """A progress message read for ``result()``: its epochs, and its last window kept as it came.

        A run with statistics every few steps sends thousands of windows; turning each into
        ``LayerStats`` only to drop it was half the CPU the client's thread spent on a run (3.5 of
        7.1 ms for the benchmark's 0.35 s run), taken from the cores a same-host run trains on."""
        for item in progress.items:
            if item.HasField("epoch"):
                self._epoch(EpochMetrics.from_proto(item.epoch))
            else:
                self._window = item.stats.stats

    def _epoch(self, metrics: EpochMetrics) -> None:
        self.history.append(metrics)
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in (("loss", metrics.loss), ("val_loss", metrics.val_loss), ("accuracy", metrics.accuracy)) if v is not None})
            self._bar.update(1)

    def result(self) -> TrainResult:
        """Wait for the run to end (reading the events left) and return its outcome."""
        self._skimming = True
        for _ in self._events:
            pass
        if self._finished is not None:
            f = self._finished
            return TrainResult(model_id=f.run_id, status=f.status, reason=f.reason, steps=f.steps, history=list(self.history), stats=f.stats)
        if self.run_id is None:
            raise Cancelled(grpc.StatusCode.CANCELLED, "the run was cancelled before it started; nothing was stored")
        stats = [s if isinstance(s, LayerStats) else LayerStats.from_proto(s) for s in self._window]
        return TrainResult(model_id=self.run_id, status="cancelled", reason="cancelled by the client", steps=None, history=list(self.history), stats=stats)

    def cancel(self) -> None:
        """Stop the run: the server stops within one step and stores it as cancelled."""
        self._cancelled = True
        self._call.cancel()


__all__ = ["EpochEvent", "StatsEvent", "TrainEvent", "TrainFinished", "TrainResult", "TrainRun", "TrainStarted"]
