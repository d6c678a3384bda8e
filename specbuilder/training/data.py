"""A ``Dataset`` fitted to a model and a loss: inputs reshaped, targets encoded, split, on the device.

Everything that could go wrong between the data, the spec and the loss is found here, before
the first step, with a message that says what to change: inputs whose element count does
not match ``input_shape``, labels the model has no output for, a loss the model's last layer
cannot feed (``bce`` after a linear layer). Batching is then plain tensor slicing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from specbuilder.datasets import Dataset, DataError
from specbuilder.devices import to_device
from specbuilder.kinds import ActivationKind
from specbuilder.registry import EntrySpec
from specbuilder.spec import ModelSpec
from specbuilder.training.config import LOSS_MODELS, problem_at
from specbuilder.training.losses import LOSSES, LossKind, auto_loss, within

Predict = Callable[[torch.Tensor], torch.Tensor]
"""Model outputs ``[N, ...]`` -> predicted class labels ``[N]``."""


@dataclass(frozen=True)
class Prepared:
    """Training and validation tensors on the device, and how to read predictions."""

    x_train: torch.Tensor
    t_train: torch.Tensor
    x_val: torch.Tensor
    t_val: torch.Tensor
    labels_train: torch.Tensor | None
    """Class labels for accuracy; None for regression."""
    labels_val: torch.Tensor | None
    predict: Predict | None
    """None where accuracy has no meaning (regression, outputs that are not class scores)."""


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def output_range(spec: ModelSpec) -> tuple[float, float]:
    """The values the model's last layer can output (unbounded unless it is an activation)."""
    last = spec.nodes[-1]
    if isinstance(last.kind, ActivationKind):
        return last.kind.range_for(last.layer.params())
    return (-math.inf, math.inf)


def choose_loss(loss: EntrySpec | None, dataset: Dataset, spec: ModelSpec) -> EntrySpec:
    """The configured loss, or the one ``auto_loss`` picks; checked against the model's outputs."""
    outputs = math.prod(spec.output_shape)
    if loss is None:
        loss = LOSS_MODELS[auto_loss(dataset.task == "classification", outputs, output_range(spec))]()
    kind = LOSSES[loss.type]
    produced = output_range(spec)
    if not within(produced, kind.output_range):
        last = spec.nodes[-1]
        raise problem_at(
            "loss",
            f"'{loss.type}' needs outputs in [{kind.output_range[0]:g}, {kind.output_range[1]:g}], but the model ends in "
            f"{last.layer.type} ({last.path}) with outputs in [{produced[0]:g}, {produced[1]:g}]; {kind.hint}",
        )
    return loss


def fit_inputs(x: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """``x`` reshaped to ``[N, *input_shape]`` when the element counts agree."""
    want = math.prod(spec.input_shape)
    have = math.prod(x.shape[1:])
    if have != want:
        raise DataError(
            f"expected {want} features per sample; the spec's input_shape is {_shape(tuple(spec.input_shape))}, the data has "
            f"shape {_shape(x.shape)} ({have} per sample): set input_shape to match or reshape the data"
        )
    return x.reshape(len(x), *spec.input_shape)


def _check_labels(y: np.ndarray, classes: int, why: str) -> None:
    if int(y.max()) >= classes:
        raise DataError(f"labels go up to {int(y.max())}, but {why}: labels must be in [0, {classes - 1}]")


def encode_targets(dataset: Dataset, kind: LossKind, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """What the loss compares outputs with, and the class labels (None for regression)."""
    out = spec.output_shape
    classes = out[0] if len(out) == 1 else None
    y = dataset.y
    if dataset.task == "regression":
        if kind.target == "class":
            raise problem_at("loss", f"'{kind.name}' needs integer class labels, but the targets are floats (regression); use mse, l1 or huber")
        if math.prod(y.shape[1:]) != math.prod(out):
            raise DataError(f"the model outputs {_shape(out)} per sample, but the targets have shape {_shape(y.shape)}; they must match")
        if y.min() < kind.target_range[0] or y.max() > kind.target_range[1]:
            raise DataError(f"'{kind.name}' needs targets in [{kind.target_range[0]:g}, {kind.target_range[1]:g}], got values from {y.min():g} to {y.max():g}")
        return y.reshape(len(y), *out), None
    if classes is None:
        raise DataError(f"class labels need a model with outputs of shape [classes], but it outputs {_shape(out)}; end it in a linear layer")
    if kind.target == "class":
        if classes < 2:
            raise problem_at("loss", f"'{kind.name}' needs one output per class, but the model has 1 output; use bce_with_logits for two classes")
        _check_labels(y, classes, f"the model has {classes} outputs")
        return y, y
    if classes == 1:
        _check_labels(y, 2, "the model has one output (class 1 above a threshold, class 0 below)")
        return y.astype(np.float32).reshape(-1, 1), y
    _check_labels(y, classes, f"the model has {classes} outputs")
    return np.eye(classes, dtype=np.float32)[y], y


def predictor(kind: LossKind, classes: int) -> Predict:
    """Predicted labels: the largest output, or for one output whether it is above the loss's threshold."""
    if classes == 1:
        return lambda out: (out[:, 0] > kind.threshold).long()
    return lambda out: out.argmax(dim=1)


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random ``(train, validation)`` indices; at least one sample is always trained on."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(round(n * fraction), n - 1)
    return order[n_val:], order[:n_val]


def prepare(dataset: Dataset, spec: ModelSpec, loss: EntrySpec, fraction: float, seed: int, device: torch.device, dtype: torch.dtype) -> Prepared:
    """The dataset fitted to the model and the loss, split and moved to ``device`` (through pinned
    memory, without blocking, for CUDA: the tensors are copied while the next ones are gathered)."""
    kind = LOSSES[loss.type]
    x = fit_inputs(dataset.x, spec)
    targets, labels = encode_targets(dataset, kind, spec)
    train, val = split_indices(len(x), fraction, seed)

    def tensor(array: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        part = torch.from_numpy(np.ascontiguousarray(array[rows]))
        return to_device(part, device, dtype if part.is_floating_point() else None)

    return Prepared(
        x_train=tensor(x, train), t_train=tensor(targets, train), x_val=tensor(x, val), t_val=tensor(targets, val),
        labels_train=None if labels is None else tensor(labels, train),
        labels_val=None if labels is None else tensor(labels, val),
        predict=None if labels is None else predictor(kind, spec.output_shape[0]),
    )
