"""Training: ``train(spec, data, config)`` and its streaming form ``train_events``.

A launcher starts the run (``launchers``): ``in_process`` here (``loop``: ``Run``), or, with
``world_size`` > 1, DistributedDataParallel over that many processes
(``specbuilder.training.distributed``; ``launch_events`` with a ``Launch`` for several nodes);
``launcher_for`` chooses by ``world_size``.
``config`` (``TrainConfig``) and the registries of losses, optimizers and schedules never
import torch, so clients can validate a config without it; the loop, its events and
``TrainResult`` load on first use.
"""

from __future__ import annotations

from specbuilder.lazy import lazy_getattr
from specbuilder.training.config import ConfigError, TrainConfig, parse_config
from specbuilder.training.losses import LOSSES
from specbuilder.training.optimizers import OPTIMIZERS
from specbuilder.training.schedules import SCHEDULES

_LAZY = {
    "train": "specbuilder.training.launchers",
    "train_events": "specbuilder.training.launchers",
    "Launcher": "specbuilder.training.launchers",
    "launcher_for": "specbuilder.training.launchers",
    "TrainResult": "specbuilder.training.loop",
    "Run": "specbuilder.training.loop",
    "in_process": "specbuilder.training.loop",
    "place_model": "specbuilder.training.loop",
    "CancelToken": "specbuilder.training.events",
    "EVENTS": "specbuilder.training.events",
    "Event": "specbuilder.training.events",
    "StartedEvent": "specbuilder.training.events",
    "EpochEvent": "specbuilder.training.events",
    "StatsEvent": "specbuilder.training.events",
    "FinishedEvent": "specbuilder.training.events",
    "EpochMetrics": "specbuilder_wire.results",
    "EvalMetrics": "specbuilder.training.events",
    "DistributedError": "specbuilder.training.distributed",
    "Launch": "specbuilder.training.distributed",
    "launch_events": "specbuilder.training.distributed",
}

__all__ = ["LOSSES", "OPTIMIZERS", "SCHEDULES", "ConfigError", "TrainConfig", "parse_config", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)
