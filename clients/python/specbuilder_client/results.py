"""What the client's calls return: plain pydantic objects with numpy arrays, built from the messages.

Conversions live here, each next to its type, so the ``Client`` only sends and receives.
Timestamps become timezone-aware datetimes, ``Value`` maps become Python values. A spec the server
sends back becomes its JSON form as a dict, every parameter spelled out: the client needs no torch
and no spec language, and ``specbuilder.ModelSpec.model_validate(record.spec)`` makes it a
``ModelSpec`` where specbuilder is installed. Statistics and epochs are the types the core
reports too (``specbuilder_wire.results``), so a remote result reads as a local one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from specbuilder_client.errors import Violation
from specbuilder_wire.results import EpochMetrics, LayerStats, status_name
from specbuilder_wire.v1 import service_pb2, spec_pb2
from specbuilder_wire.values import config_from_proto, decode_value, spec_to_dict


class Result(BaseModel):
    """Base of every result: immutable, numpy arrays allowed."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)


def spec_dict(message: spec_pb2.ModelSpec) -> dict[str, Any]:
    """A spec the server sent, as the dict of its JSON form (the server validated it: it has no problems to report)."""
    return spec_to_dict(message)[0]


def layer_stats(messages: Any) -> list[LayerStats]:
    """A repeated ``LayerStats`` field as a list."""
    return [LayerStats.from_proto(m) for m in messages]


class Validation(Result):
    """ValidateSpec's answer: an invalid spec is an answer, with every problem at its path."""

    valid: bool
    problems: list[Violation]
    spec: dict[str, Any] | None = Field(description="the spec's JSON form with every parameter spelled out, when valid")
    spec_hash: str
    num_params: int
    output_shape: tuple[int, ...]

    def __bool__(self) -> bool:
        return self.valid

    @classmethod
    def from_proto(cls, message: service_pb2.ValidateSpecResponse) -> Validation:
        return cls(
            valid=message.valid,
            problems=[Violation(v.path, v.message, v.type) for v in message.violations],
            spec=spec_dict(message.spec) if message.valid else None,
            spec_hash=message.spec_hash,
            num_params=message.num_params,
            output_shape=tuple(message.output_shape),
        )


class LayerSummary(Result):
    """One module of a compiled model."""

    index: int
    name: str = Field(description="module name, the state_dict prefix")
    type: str
    path: str = Field(description="where it comes from in the spec: layers[2] or layers[2].activation")
    output_shape: tuple[int, ...]
    num_params: int


class Compiled(Result):
    """CompileSpec's answer: the layer table, shapes, parameter counts and optionally source."""

    spec_hash: str
    layers: list[LayerSummary]
    output_shape: tuple[int, ...]
    num_params: int
    code: str | None = Field(description="standalone PyTorch source, when asked for")
    summary: str = Field(description="the layer table as text")

    def __str__(self) -> str:
        return self.summary

    @classmethod
    def from_proto(cls, message: service_pb2.CompileSpecResponse, *, code: bool) -> Compiled:
        layers = [
            LayerSummary(index=m.index, name=m.name, type=m.type, path=m.path, output_shape=tuple(m.output_shape), num_params=m.num_params)
            for m in message.layers
        ]
        return cls(
            spec_hash=message.spec_hash, layers=layers, output_shape=tuple(message.output_shape),
            num_params=message.num_params, code=message.code if code else None, summary=message.summary,
        )


class EvalResult(Result):
    """Evaluate's answer. ``outputs`` is a read-only view on the received bytes (None with skip_output)."""

    outputs: np.ndarray | None
    stats: list[LayerStats]
    compute_seconds: float = Field(description="seconds the server spent on the forward pass and statistics")


class StreamSummary(Result):
    """The end of a stream: counts and statistics over every batch."""

    batches: int
    rows: int
    stats: list[LayerStats]
    compute_seconds: float

    @classmethod
    def from_proto(cls, message: service_pb2.StreamSummary) -> StreamSummary:
        return cls(batches=message.batches, rows=message.rows, stats=layer_stats(message.stats), compute_seconds=message.compute_seconds)


def _datetime(timestamp: Any) -> datetime | None:
    return timestamp.ToDatetime(tzinfo=timezone.utc) if timestamp.seconds or timestamp.nanos else None


class ModelSummary(Result):
    """A stored model or training run as ``list_models`` gives it: no spec, config, history or statistics."""

    id: str
    name: str
    status: str = Field(description="running, completed, diverged, cancelled, failed or interrupted")
    num_params: int
    spec_hash: str
    created: datetime | None
    updated: datetime | None
    dataset: str = Field(description="built-in dataset name; empty for arrays")
    reason: str = Field(description="why the run ended as it did, for anything but completed")
    has_weights: bool

    @classmethod
    def from_proto(cls, message: service_pb2.ModelRecord) -> ModelSummary:
        return cls(**cls._summary_fields(message))

    @staticmethod
    def _summary_fields(message: service_pb2.ModelRecord) -> dict[str, Any]:
        return {
            "id": message.id, "name": message.name, "status": status_name(message.status), "num_params": message.num_params,
            "spec_hash": message.spec_hash, "created": _datetime(message.created), "updated": _datetime(message.updated),
            "dataset": message.dataset, "reason": message.reason, "has_weights": message.has_weights,
        }


class ModelRecord(ModelSummary):
    """A stored model or training run in full (``get_model``)."""

    spec: dict[str, Any] = Field(description="the spec's JSON form with every parameter spelled out")
    config: dict[str, Any] = Field(description="the training configuration by TrainConfig's field names; train(**config) repeats it")
    history: list[EpochMetrics]
    stats: list[LayerStats]

    @classmethod
    def from_proto(cls, message: service_pb2.ModelRecord) -> ModelRecord:
        return cls(
            **cls._summary_fields(message), spec=spec_dict(message.spec), config=config_from_proto(message.config),
            history=[EpochMetrics.from_proto(m) for m in message.history], stats=layer_stats(message.stats),
        )


class ParameterInfo(Result):
    """One parameter of an activation."""

    name: str
    type: str
    default: Any = Field(description="its default (None when it has none)")
    constraint: str


class ActivationInfo(Result):
    """One activation of the server's registry."""

    name: str
    aliases: list[str]
    summary: str
    formula: str
    parameters: list[ParameterInfo]
    range_min: float
    range_max: float
    flat_region: str

    @classmethod
    def from_proto(cls, message: service_pb2.ActivationInfo) -> ActivationInfo:
        parameters = [
            ParameterInfo(name=p.name, type=p.type, default=decode_value(p.default) if p.HasField("default") else None, constraint=p.constraint)
            for p in message.parameters
        ]
        return cls(
            name=message.name, aliases=list(message.aliases), summary=message.summary, formula=message.formula,
            parameters=parameters, range_min=message.range_min, range_max=message.range_max, flat_region=message.flat_region,
        )


__all__ = [
    "ActivationInfo", "Compiled", "EvalResult", "LayerSummary", "ModelRecord", "ModelSummary", "ParameterInfo", "Result",
    "StreamSummary", "Validation", "layer_stats", "spec_dict",
]
