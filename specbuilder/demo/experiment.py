"""The demo's experiment: the tutorial network trained once per activation, through the client.

The network is the activation tutorials' classifier with two hidden layers,
``[2] -> linear 32 -> ACT -> linear 32 -> ACT -> linear 2``, whose two outputs are logits
trained with cross-entropy (softmax lives in the loss, as in PyTorch's own tutorials). Two
hidden activations, not one, because the gradient column measures what reaches the *first*
hidden layer: that gradient has passed back through the second activation's derivative, so
step's zero gradient and sigmoid's vanishing one show in it. Every row uses the same seed and
config, so the networks start from the same weights and see the same batches.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from specbuilder_client import Client, LayerStats, StatsEvent

HIDDEN = 32
CLASSES = 2
"""The built-in ``spirals`` dataset has two arms."""
DATASET = "spirals"
EPOCHS = 60
ACTIVATIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("identity", {"type": "identity"}),
    ("step", {"type": "step"}),
    ("step (ste)", {"type": "step", "surrogate": "ste"}),
    ("sigmoid", {"type": "sigmoid"}),
    ("tanh", {"type": "tanh"}),
    ("relu", {"type": "relu"}),
    ("relu6", {"type": "relu6"}),
    ("leaky_relu", {"type": "leaky_relu"}),
)
"""(row label, activation layer) for every row: the tutorials' activations, and step with a
straight-through surrogate gradient as the contrast to plain step."""


def training_config(epochs: int = EPOCHS) -> dict[str, Any]:
    """The one config every row trains with (TrainConfig fields)."""
    return {"epochs": epochs, "batch_size": 32, "lr": 0.01, "optimizer": "adam", "loss": "cross_entropy",
            "seed": 0, "stats_every": 10, "device": "cpu"}


def tutorial_spec(label: str, activation: dict[str, Any]) -> dict[str, Any]:
    """The tutorial network with ``activation`` after each hidden layer (named ``act1``, ``act2``)."""
    return {
        "name": f"tutorial-{label.replace(' ', '-').replace('(', '').replace(')', '')}",
        "input_shape": [2],
        "layers": [
            {"type": "linear", "out_features": HIDDEN, "name": "fc1"},
            {**activation, "name": "act1"},
            {"type": "linear", "out_features": HIDDEN, "name": "fc2"},
            {**activation, "name": "act2"},
            {"type": "linear", "out_features": CLASSES, "name": "logits"},
        ],
    }


@dataclass
class Row:
    """What one activation's run measured."""

    label: str
    params: int
    status: str
    accuracy: float | None
    """Validation accuracy after the last epoch."""
    dead: float
    """Fraction of hidden units that never fired on the validation set, after training."""
    saturated: float
    """Fraction of hidden outputs in the activation's flat region, on the validation set."""
    grad_norm: float | None
    """Mean over the training's statistics windows of ||dL/dy|| at the first hidden activation."""
    grad_curve: list[tuple[int, float]] = field(default_factory=list)
    """(step, gradient norm at the first hidden activation) of every statistics window."""


def hidden_fractions(stats: Sequence[LayerStats]) -> tuple[float, float]:
    """Dead and saturated fractions over all hidden activations together, weighted by element count
    (the layers have equally many units, so this is exactly the fraction of all hidden units/outputs)."""
    total = sum(layer.count for layer in stats)
    if not total:
        return 0.0, 0.0
    return (sum(layer.dead_fraction * layer.count for layer in stats) / total,
            sum(layer.saturated_fraction * layer.count for layer in stats) / total)


def train_one(client: Client, label: str, activation: dict[str, Any], config: dict[str, Any]) -> Row:
    """Compile and train one row's network on the server; its measurements."""
    spec = tutorial_spec(label, activation)
    compiled = client.compile(spec)
    run = client.train(spec, DATASET, name=spec["name"], **config)
    curve = [(event.step, event.stats[0].grad_norm) for event in run
             if isinstance(event, StatsEvent) and event.stats and event.stats[0].grad_norm is not None]
    result = run.result()
    dead, saturated = hidden_fractions(result.stats)
    return Row(
        label=label, params=compiled.num_params, status=result.status,
        accuracy=result.history[-1].accuracy if result.history else None,
        dead=dead, saturated=saturated,
        grad_norm=statistics.fmean(g for _, g in curve) if curve else None, grad_curve=curve,
    )


__all__ = ["ACTIVATIONS", "DATASET", "EPOCHS", "HIDDEN", "Row", "hidden_fractions", "train_one", "training_config", "tutorial_spec"]
