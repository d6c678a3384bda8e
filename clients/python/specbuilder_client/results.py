"""What the client's calls return: plain pydantic objects with numpy arrays, built from the messages.

Conversions live here, each next to its type, so the ``Client`` only sends and receives.
Timestamps become timezone-aware datetimes, ``Value`` maps become Python values. A spec the server
sends back becomes its JSON form as a dict, every parameter spelled out: the client needs no torch
and no spec language, and ``specbuilder.ModelSpec.model_validate(record.spec)`` makes it a
``ModelSpec`` where specbuilder is installed. Statistics and epochs are the types the core
reports too (``specbuilder_wire.results``), so a remote result reads as a local one.
"""

from __future__ import annotations

import json
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
    """One parameter of a layer or an activation: everything a spec needs to give it."""

    name: str
    type: str = Field(description='its value kinds as in the JSON schema ("integer", "number", "boolean", "string", "array", "null"), '
                                  'several joined by " | "; an "integer" refuses a real such as 8.0, a "number" takes an int')
    default: Any = Field(description="its default (None when it has none, or when None is its default: see required)")
    constraint: str = Field(description="its bounds and choices, for people")
    minimum: float | None = Field(description="its lower bound (of each element, for a list); inclusive unless exclusive_minimum")
    maximum: float | None = Field(description="its upper bound (of each element, for a list); inclusive unless exclusive_maximum")
    exclusive_minimum: bool
    exclusive_maximum: bool
    choices: list[str] = Field(description="the strings it takes, for a parameter with a fixed set")
    required: bool = Field(description="a spec must give it")
    inferred: bool = Field(description="left out, it is inferred from the input shape (in_features, num_features)")
    items: str = Field(description='the element kind of a list parameter ("integer", ...); empty otherwise')

    @classmethod
    def from_proto(cls, message: service_pb2.ParameterInfo) -> ParameterInfo:
        return cls(
            name=message.name, type=message.type, default=decode_value(message.default) if message.HasField("default") else None,
            constraint=message.constraint, minimum=message.minimum if message.HasField("minimum") else None,
            maximum=message.maximum if message.HasField("maximum") else None, exclusive_minimum=message.exclusive_minimum,
            exclusive_maximum=message.exclusive_maximum, choices=list(message.choices), required=message.required,
            inferred=message.inferred, items=message.items,
        )


class ActivationInfo(Result):
    """One activation of the server's registry."""

    name: str
    aliases: list[str] = Field(description="every other name a spec's type takes for it; names match case-insensitively")
    summary: str
    formula: str
    parameters: list[ParameterInfo]
    range_min: float
    range_max: float
    flat_region: str

    @classmethod
    def from_proto(cls, message: service_pb2.ActivationInfo) -> ActivationInfo:
        return cls(
            name=message.name, aliases=list(message.aliases), summary=message.summary, formula=message.formula,
            parameters=[ParameterInfo.from_proto(p) for p in message.parameters], range_min=message.range_min,
            range_max=message.range_max, flat_region=message.flat_region,
        )


class LayerInfo(Result):
    """One layer type of the spec language that is no activation."""

    name: str
    aliases: list[str] = Field(description="every other name a spec's type takes for it; names match case-insensitively")
    summary: str
    parameters: list[ParameterInfo]
    module: str = Field(description='the torch.nn class it compiles to, such as "torch.nn.Linear"')

    @classmethod
    def from_proto(cls, message: service_pb2.LayerInfo) -> LayerInfo:
        return cls(name=message.name, aliases=list(message.aliases), summary=message.summary,
                   parameters=[ParameterInfo.from_proto(p) for p in message.parameters], module=message.module)


class DatasetInfo(Result):
    """One built-in dataset the server trains on by name."""

    name: str
    description: str
    input_shape: tuple[int, ...]
    target_kind: str = Field(description='"classes" (int64 class indices) or "values" (float regression targets)')
    classes: int = Field(description="number of classes; 0 for values")
    rows: int = Field(description="samples it holds at its default size")

    @classmethod
    def from_proto(cls, message: service_pb2.DatasetInfo) -> DatasetInfo:
        return cls(name=message.name, description=message.description, input_shape=tuple(message.input_shape),
                   target_kind=message.target_kind, classes=message.classes, rows=message.rows)


class Schemas(Result):
    """The JSON Schemas (draft 2020-12) of the spec language and of the training configuration."""

    spec: dict[str, Any] = Field(description="a spec's JSON form validates against it (the server checks more: shapes, limits)")
    train_config: dict[str, Any] = Field(description="the training configuration, nested: train(**config) takes what it describes")

    @classmethod
    def from_proto(cls, message: service_pb2.GetSchemaResponse) -> Schemas:
        return cls(spec=json.loads(message.spec_schema), train_config=json.loads(message.train_config_schema))


__all__ = [
    "ActivationInfo", "Compiled", "DatasetInfo", "EvalResult", "LayerInfo", "LayerSummary", "ModelRecord", "ModelSummary",
    "ParameterInfo", "Result", "Schemas", "StreamSummary", "Validation", "layer_stats", "spec_dict",
]
