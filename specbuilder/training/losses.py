"""The loss registry: every loss ``TrainConfig.loss`` may name, and what each needs.

Each entry names its torch function by dotted path (validation never imports torch), says
what targets it takes (class indices or values shaped like the output), which outputs it
needs (``bce`` wants probabilities, ``nll`` log-probabilities: checked against the spec's last
layer before training starts) and, for one-output classifiers, where class 1 begins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from specbuilder.training.choices import Choice

F = "torch.nn.functional."
INF = math.inf


@dataclass(frozen=True)
class LossKind(Choice):
    """A loss: its torch function and the targets and outputs it works with."""

    function: str = ""
    """Dotted path of ``fn(output, target, **params) -> scalar``."""
    target: Literal["class", "value"] = "value"
    """``class``: int64 labels ``[N]`` against ``[N, C]`` scores; ``value``: floats shaped like the output."""
    output_range: tuple[float, float] = (-INF, INF)
    """The outputs this loss is defined for; the model's last layer must stay inside."""
    target_range: tuple[float, float] = (-INF, INF)
    """The values value targets may take (``bce`` wants them in [0, 1])."""
    threshold: float = 0.5
    """A one-output classifier predicts class 1 where its output is above this."""
    hint: str = ""
    """What to change when the model's outputs do not fit."""


def _entries() -> list[LossKind]:
    return [
        LossKind(
            "cross_entropy", "Softmax cross-entropy of raw scores against class labels.",
            params={"label_smoothing": (Annotated[float, Field(ge=0, le=1)], 0.0)},
            function=F + "cross_entropy", target="class",
        ),
        LossKind(
            "nll", "Negative log-likelihood of log-probabilities against class labels.",
            function=F + "nll_loss", target="class", output_range=(-INF, 0.0),
            hint="end the model in log_softmax, or use 'cross_entropy' on raw scores",
        ),
        LossKind(
            "bce", "Binary cross-entropy of probabilities against 0/1 targets (labels are one-hot encoded).",
            function=F + "binary_cross_entropy", output_range=(0.0, 1.0), target_range=(0.0, 1.0),
            hint="end the model in sigmoid, or use 'bce_with_logits' on raw scores",
        ),
        LossKind(
            "bce_with_logits", "Binary cross-entropy of raw scores (a fused sigmoid) against 0/1 targets.",
            function=F + "binary_cross_entropy_with_logits", target_range=(0.0, 1.0), threshold=0.0,
        ),
        LossKind("mse", "Mean squared error.", function=F + "mse_loss"),
        LossKind("l1", "Mean absolute error.", function=F + "l1_loss"),
        LossKind(
            "huber", "Squared error below delta, absolute error above it: robust to outliers.",
            params={"delta": (Annotated[float, Field(gt=0)], 1.0)}, function=F + "huber_loss",
        ),
    ]


LOSSES: dict[str, LossKind] = {entry.name: entry for entry in _entries()}
"""Every loss by name."""


def within(inner: tuple[float, float], outer: tuple[float, float]) -> bool:
    """Whether the range ``inner`` lies inside ``outer``."""
    return outer[0] <= inner[0] and inner[1] <= outer[1]


def auto_loss(classification: bool, outputs: int, output_range: tuple[float, float]) -> str:
    """The loss for a task and a model's outputs when the config names none.

    Regression: ``mse``. Classification with one output: ``bce`` on probabilities, else
    ``bce_with_logits``; with several: ``nll`` on log-probabilities, else ``cross_entropy``.
    """
    if not classification:
        return "mse"
    if outputs == 1:
        return "bce" if within(output_range, LOSSES["bce"].output_range) else "bce_with_logits"
    return "nll" if within(output_range, LOSSES["nll"].output_range) else "cross_entropy"
