"""The learning-rate schedule registry: how ``lr`` changes from epoch to epoch.

A schedule is a pure function ``lr_at(epoch, epochs, lr, **params)`` (epochs count from 0), so
it is exact, testable without torch, and costs nothing inside an epoch: the training loop sets
the rate once at the start of each epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from specbuilder.layers import PositiveInt
from specbuilder.training.choices import Choice

LrAt = Callable[..., float]
"""``(epoch, epochs, lr, **params) -> learning rate for that epoch``."""


def constant(epoch: int, epochs: int, lr: float) -> float:
    """The same rate every epoch."""
    return lr


def step(epoch: int, epochs: int, lr: float, step_size: int, gamma: float) -> float:
    """``lr * gamma ** (epoch // step_size)``: multiplied by gamma every step_size epochs."""
    return lr * gamma ** (epoch // step_size)


def cosine(epoch: int, epochs: int, lr: float, eta_min: float) -> float:
    """Half a cosine from ``lr`` at the first epoch down towards ``eta_min`` after the last."""
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


@dataclass(frozen=True)
class ScheduleKind(Choice):
    """A schedule: its rate for each epoch."""

    lr_at: LrAt = constant


def _entries() -> list[ScheduleKind]:
    return [
        ScheduleKind("constant", constant.__doc__ or "", lr_at=constant),
        ScheduleKind(
            "step", step.__doc__ or "",
            params={"step_size": (PositiveInt, 10), "gamma": (Annotated[float, Field(gt=0, le=1)], 0.1)}, lr_at=step,
        ),
        ScheduleKind("cosine", cosine.__doc__ or "", params={"eta_min": (Annotated[float, Field(ge=0)], 0.0)}, lr_at=cosine),
    ]


SCHEDULES: dict[str, ScheduleKind] = {entry.name: entry for entry in _entries()}
"""Every schedule by name."""

