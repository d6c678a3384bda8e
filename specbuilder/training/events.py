"""What a training run reports while it runs, and how a caller stops it.

Events are pydantic models discriminated by ``type`` and serializable to JSON (non-finite
losses of a diverged run become ``"NaN"`` / ``"Infinity"``), so the server streams them as
they are: ``started``, then ``epoch`` and ``stats`` as they happen, and ``finished`` last,
which also carries the ``TrainResult`` (not serialized: it holds the module).
"""

from __future__ import annotations

import multiprocessing.synchronize
import threading
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter

from specbuilder.training.config import TrainConfig
from specbuilder_wire.results import EpochMetrics, LayerStats

if TYPE_CHECKING:
    from specbuilder.training.loop import TrainResult

Status = Literal["completed", "diverged", "cancelled"]


class CancelToken:
    """A thread-safe request to stop a run: the loop checks it before every step.

    The first ``cancel()`` wins; its reason becomes the run's ``reason``. A subclass may keep the
    flag (``_event``), its ``_lock`` and the reason (``_keep``, ``reason``) elsewhere: in memory
    shared with other processes (``specbuilder.training.distributed.SharedCancel``).
    """

    def __init__(self) -> None:
        self._event: threading.Event | multiprocessing.synchronize.Event = threading.Event()
        self._lock: AbstractContextManager[Any] = threading.Lock()
        self._reason = ""

    def cancel(self, reason: str = "cancelled by the caller") -> None:
        """Ask the run to stop before its next step."""
        with self._lock:
            if not self._event.is_set():
                self._keep(reason)
                self._event.set()

    def _keep(self, reason: str) -> None:
        """Record the first cancel's reason (called holding ``_lock``, before the flag is set)."""
        self._reason = reason

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str:
        return self._reason


class Report(BaseModel):
    """Base of events and metrics: immutable; NaN and infinity serialize as strings."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")


class EvalMetrics(Report):
    """Loss and accuracy of the final model on one split."""

    split: Literal["validation", "training"]
    samples: int
    loss: float
    accuracy: float | None = Field(description="None for regression")


class StartedEvent(Report):
    """Training begins: what is trained, on what, where."""

    type: Literal["started"] = "started"
    model: str
    parameters: int
    dataset: str
    train_samples: int
    val_samples: int
    steps_per_epoch: int
    loss: str = Field(description="the loss in use (chosen from the data when the config names none)")
    device: str
    config: TrainConfig


class EpochEvent(Report):
    """An epoch finished."""

    type: Literal["epoch"] = "epoch"
    metrics: EpochMetrics


class StatsEvent(Report):
    """Activation statistics of one monitored training step (every ``stats_every`` steps)."""

    type: Literal["stats"] = "stats"
    step: int = Field(description="the monitored step, counted from 1")
    epoch: int = Field(description="the epoch it belongs to, from 1")
    layers: list[LayerStats]


class FinishedEvent(Report):
    """The run is over: always the last event, whatever happened."""

    type: Literal["finished"] = "finished"
    status: Status
    reason: str
    steps: int
    epochs: int = Field(description="epochs finished")
    seconds: float
    final: EvalMetrics
    _result: TrainResult | None = PrivateAttr(default=None)

    @property
    def result(self) -> TrainResult:
        """The run's ``TrainResult``, module included (never serialized)."""
        if self._result is None:
            raise ValueError("this event was parsed from JSON; only the training process holds the result")
        return self._result


Event = Annotated[Union[StartedEvent, EpochEvent, StatsEvent, FinishedEvent], Field(discriminator="type")]  # noqa: UP007
EVENTS: TypeAdapter[Event] = TypeAdapter(Event)
"""``EVENTS.validate_json(text)`` parses any event back."""
