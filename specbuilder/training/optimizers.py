"""The optimizer registry: every optimizer ``TrainConfig.optimizer`` may name.

Parameters keep ``torch.optim``'s names and defaults (``momentum``, ``nesterov``, ``betas``,
``weight_decay``); the learning rate is ``TrainConfig.lr``, shared by all. Entries name the
torch class by dotted path, so validating a config never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from specbuilder.training.choices import Choice

Momentum = Annotated[float, Field(ge=0, lt=1)]
Decay = Annotated[float, Field(ge=0)]
Eps = Annotated[float, Field(gt=0)]
Betas = Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)]


@dataclass(frozen=True)
class OptimizerKind(Choice):
    """An optimizer: its ``torch.optim`` class."""

    cls: str = ""
    """Dotted path of the ``torch.optim.Optimizer`` subclass."""


def _nesterov_needs_momentum(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    if params["nesterov"] and params["momentum"] == 0:
        return [("nesterov", "needs momentum > 0, got momentum 0")]
    return []


def _entries() -> list[OptimizerKind]:
    return [
        OptimizerKind(
            "sgd", "Stochastic gradient descent, with optional (Nesterov) momentum.",
            params={"momentum": (Momentum, 0.0), "nesterov": (bool, False), "weight_decay": (Decay, 0.0)},
            check=_nesterov_needs_momentum, cls="torch.optim.SGD",
        ),
        OptimizerKind(
            "adam", "Adam: per-parameter steps from running means of the gradient and its square.",
            params={"betas": (Betas, [0.9, 0.999]), "eps": (Eps, 1e-8), "weight_decay": (Decay, 0.0)},
            cls="torch.optim.Adam",
        ),
        OptimizerKind(
            "adamw", "Adam with decoupled weight decay.",
            params={"betas": (Betas, [0.9, 0.999]), "eps": (Eps, 1e-8), "weight_decay": (Decay, 0.01)},
            cls="torch.optim.AdamW",
        ),
        OptimizerKind(
            "rmsprop", "RMSprop: steps scaled by a running mean of the squared gradient.",
            params={"alpha": (Annotated[float, Field(ge=0, le=1)], 0.99), "eps": (Eps, 1e-8),
                    "momentum": (Momentum, 0.0), "weight_decay": (Decay, 0.0)},
            cls="torch.optim.RMSprop",
        ),
        OptimizerKind(
            "adagrad", "Adagrad: steps scaled by the accumulated squared gradient.",
            params={"lr_decay": (Decay, 0.0), "eps": (Eps, 1e-10), "weight_decay": (Decay, 0.0)},
            cls="torch.optim.Adagrad",
        ),
    ]


OPTIMIZERS: dict[str, OptimizerKind] = {entry.name: entry for entry in _entries()}
"""Every optimizer by name."""
