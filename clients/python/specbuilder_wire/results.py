"""What specbuilder reports, as plain torch-free types, and each one's protobuf form both ways.

The core makes these (``specbuilder.stats`` the statistics, ``specbuilder.training`` the
epochs, ``specbuilder.errors`` the problems), the server sends them, the client hands them out:
one class each, so a remote result reads as a local one.

- ``Problem``: one thing wrong with a spec or a request, at one path.
- ``LayerStats`` and its ``Histogram``: what one monitored layer's outputs did over a window.
- ``EpochMetrics``: one finished epoch of training.
- ``status_name`` / ``status_value``: a run's status as a name (``completed``) and as the
  ``RunStatus`` enum value.

On the wire, statistics a layer could not have (``mean`` of a layer that saw no finite value)
travel as NaN and read back as None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from specbuilder_wire.v1 import service_pb2


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a spec or a request, at one path (``layers[2].negative_slope``); ``type`` names the rule."""

    path: str
    message: str
    type: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class Histogram(BaseModel):
    """Counts of the finite values in fixed bins ``[edges[i], edges[i+1])``.

    Bins are uniform over the activation's range where it is finite (``linear``), and uniform in
    ``symlog(y)`` (about linear near 0, logarithmic beyond) where it is not (``symlog``); they
    are fixed per activation and bin count, so histograms of one layer merge by adding counts.
    """

    model_config = ConfigDict(frozen=True)

    scale: Literal["linear", "symlog"] = Field(description="how the edges are spaced")
    edges: list[float] = Field(description="``len(counts) + 1`` edges, ascending")
    counts: list[int] = Field(description="finite values per bin; values beyond the outer edges are counted in the end bins")

    def to_proto(self) -> service_pb2.Histogram:
        return service_pb2.Histogram(scale=self.scale, edges=self.edges, counts=self.counts)

    @classmethod
    def from_proto(cls, message: service_pb2.Histogram) -> Histogram:
        return cls(scale=message.scale, edges=list(message.edges), counts=list(message.counts))


_FINITE_MOMENTS = ("mean", "std", "min", "max")
"""None when a layer saw no finite value; NaN on the wire, where these fields are not optional."""
_OPTIONAL = ("grad_norm", "entropy", "max_probability")
"""None where they do not apply; unset on the wire (the proto marks them optional)."""


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


class LayerStats(BaseModel):
    """Statistics of one monitored layer over a window of passes.

    - ``count``: elements seen; ``nan_count`` / ``inf_count``: NaN and +-inf among them.
    - ``mean``, ``std`` (population, ddof 0), ``min``, ``max``: over the finite values only; None
      when there were none. The histogram counts the finite values only, too.
    - ``zero_fraction``: exact zeros / ``count``.
    - ``saturated_fraction``: elements in the activation's flat region (where its derivative is
      below 1% of its maximum, tested on the activation's input and output; NaN is never flat) / ``count``.
    - ``dead_fraction``: units (the feature dim of a per-sample vector, else the channel dim: dim 1
      of the batched tensor) that sat in the flat region for every sample and position seen —
      dying ReLUs — over all ``units``. Layers without a flat region (every layer that is not an
      activation, and activations that never go flat) report 0 saturated and 0 dead.
    - ``grad_norm``: mean over backward passes of ``||dL/dy||`` at the layer's output; None
      without a backward pass.
    - ``entropy``, ``max_probability``: softmax-like layers only, means over rows along their
      ``dim`` (rows with non-finite entropy left out); None for other layers.
    """

    model_config = ConfigDict(frozen=True)

    index: int = Field(description="position in the compiled model")
    name: str = Field(description="module name")
    kind: str = Field(description="the layer type, as in the spec (relu, linear)")
    count: int = Field(description="elements seen")
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    nan_count: int
    inf_count: int
    zero_fraction: float = Field(description="fraction of elements exactly zero")
    saturated_fraction: float = Field(description="fraction of elements in the activation's flat region")
    dead_fraction: float = Field(description="fraction of units in the flat region for every sample seen")
    units: int = Field(description="units (features or channels) the dead fraction is taken over")
    histogram: Histogram
    grad_norm: float | None = Field(description="gradient norm reaching the output, during training")
    entropy: float | None = Field(description="mean row entropy, for softmax-like outputs")
    max_probability: float | None = Field(description="mean largest row probability, for softmax-like outputs")

    def to_proto(self) -> service_pb2.LayerStats:
        fields = self.model_dump(exclude={"histogram", *_FINITE_MOMENTS, *_OPTIONAL})
        moments = {key: math.nan if getattr(self, key) is None else getattr(self, key) for key in _FINITE_MOMENTS}
        optional = {key: getattr(self, key) for key in _OPTIONAL if getattr(self, key) is not None}
        return service_pb2.LayerStats(**fields, **moments, **optional, histogram=self.histogram.to_proto())

    @classmethod
    def from_proto(cls, message: service_pb2.LayerStats) -> LayerStats:
        return cls(
            index=message.index, name=message.name, kind=message.kind, count=message.count,
            **{key: _none_if_nan(getattr(message, key)) for key in _FINITE_MOMENTS},
            nan_count=message.nan_count, inf_count=message.inf_count, zero_fraction=message.zero_fraction,
            saturated_fraction=message.saturated_fraction, dead_fraction=message.dead_fraction, units=message.units,
            histogram=Histogram.from_proto(message.histogram),
            **{key: getattr(message, key) if message.HasField(key) else None for key in _OPTIONAL},
        )


class EpochMetrics(BaseModel):
    """One finished epoch; NaN and infinity (a diverged run's loss) serialize to JSON as strings."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    epoch: int = Field(description="epochs finished, from 1")
    step: int = Field(description="optimizer steps taken so far")
    loss: float = Field(description="mean training loss over the epoch's steps")
    val_loss: float | None = Field(description="loss on the validation set; None without one")
    accuracy: float | None = Field(description="validation accuracy, for classification with a validation set")
    lr: float = Field(description="the learning rate during the epoch")
    seconds: float = Field(description="wall time of the epoch, its validation included")

    def to_proto(self) -> service_pb2.EpochMetrics:
        return service_pb2.EpochMetrics(**self.model_dump(exclude_none=True))

    @classmethod
    def from_proto(cls, message: service_pb2.EpochMetrics) -> EpochMetrics:
        return cls(
            epoch=message.epoch, step=message.step, loss=message.loss,
            val_loss=message.val_loss if message.HasField("val_loss") else None,
            accuracy=message.accuracy if message.HasField("accuracy") else None,
            lr=message.lr, seconds=message.seconds,
        )


_STATUS_PREFIX = "RUN_STATUS_"


def status_name(value: int) -> str:
    """``RUN_STATUS_COMPLETED`` -> ``"completed"``; a ValueError for a value the enum does not have."""
    return service_pb2.RunStatus.Name(value).removeprefix(_STATUS_PREFIX).lower()


RUN_STATUSES: tuple[str, ...] = tuple(status_name(value) for value in service_pb2.RunStatus.values() if value)
"""Every run status by name, in the enum's order: running, completed, diverged, cancelled, failed, interrupted."""


def status_value(name: str) -> int:
    """``"completed"`` -> ``RUN_STATUS_COMPLETED``; a ValueError naming the choices otherwise."""
    if name not in RUN_STATUSES:
        raise ValueError(f"unknown run status {name!r}; use one of {', '.join(RUN_STATUSES)}")
    return service_pb2.RunStatus.Value(_STATUS_PREFIX + name.upper())


__all__ = ["RUN_STATUSES", "EpochMetrics", "Histogram", "LayerStats", "Problem", "status_name", "status_value"]
