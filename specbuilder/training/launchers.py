"""``train_events`` and ``train``: a run started by a launcher, in this process or over several.

A launcher takes what ``train_events`` takes and yields the run's events: ``loop.in_process``
trains here, ``distributed.launch_events`` (with a ``Launch`` saying where the ranks meet)
over ``config.world_size`` processes. ``launcher_for`` is the one place that chooses between
them by ``world_size``; ``train_events`` asks it unless given a launcher, and so does the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any, Protocol

from specbuilder.datasets import DataLike
from specbuilder.training.config import TrainConfig, parse_config
from specbuilder.training.distributed import Launch, launch_events
from specbuilder.training.events import CancelToken, Event, FinishedEvent
from specbuilder.training.loop import ModelLike, TrainResult, in_process


class Launcher(Protocol):
    """Starts a run and yields its events: ``started``, ``epoch`` and ``stats`` as they happen, ``finished`` last."""

    def __call__(self, model: ModelLike, data: DataLike, config: TrainConfig, *, cancel: CancelToken | None = None) -> Iterator[Event]: ...


def launcher_for(config: TrainConfig, launch: Launch | None = None) -> Launcher:
    """``in_process`` for ``world_size`` 1; ``launch_events`` over ``launch`` (default: one node) for more."""
    return in_process if config.world_size == 1 else partial(launch_events, launch=launch)


def train_events(model: ModelLike, data: DataLike, config: TrainConfig | Mapping[str, Any] | str | None = None, *,
                 cancel: CancelToken | None = None, launcher: Launcher | None = None) -> Iterator[Event]:
    """Train, yielding ``started``, then ``epoch`` and ``stats`` events, and ``finished`` last.

    ``model``: a spec (any form ``parse_spec`` takes) or a module compiled by specbuilder
    (trained in place; with device "auto" it stays where it is). ``data``: a built-in dataset
    name, an ``.npz`` path, ``(x, y)`` arrays or tensors, or a ``Dataset``. Invalid input raises
    ``ConfigError``, ``SpecError`` or ``DataError`` before training starts; afterwards nothing
    raises: the finished event says how the run ended and carries the ``TrainResult``.

    ``launcher`` starts the run (default: ``launcher_for(config)``). With ``world_size`` > 1
    the ranks are launched by ``specbuilder.training.distributed`` and rank 0's events are
    relayed here as they happen; a failed rank raises ``DistributedError``.
    """
    config = parse_config(config)
    yield from (launcher or launcher_for(config))(model, data, config, cancel=cancel)


def train(model: ModelLike, data: DataLike, config: TrainConfig | Mapping[str, Any] | str | None = None, *,
          on_event: Callable[[Event], None] | None = None, cancel: CancelToken | None = None,
          launcher: Launcher | None = None) -> TrainResult:
    """Train ``model`` on ``data``; ``on_event`` sees every event as it happens. See ``train_events``."""
    for event in train_events(model, data, config, cancel=cancel, launcher=launcher):
        if on_event is not None:
            on_event(event)
    assert isinstance(event, FinishedEvent)
    return event.result


__all__ = ["Launcher", "launcher_for", "train", "train_events"]
