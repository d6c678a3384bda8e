"""What the service offers, as the messages that describe it: ListLayers, ListActivations,
ListDatasets and GetSchema, each answer read from the registries and built once (they never change
while the server runs).

A parameter's facts (``ParameterInfo``) are read from the JSON schema of its kind's model: the
model the spec validator checks against, whose schema GetSchema sends too, so the facts, the
validator and the schema cannot disagree. Which parameters are inferred comes from the kind
(``LayerKind.inferred``), the other names a kind goes by from the spec language
(``spec.other_names``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from specbuilder.activations import ACTIVATIONS
from specbuilder.datasets import DATASETS, DatasetInfo
from specbuilder.kinds import ActivationKind, LayerKind
from specbuilder.layers import LAYERS
from specbuilder.registry import EntrySpec
from specbuilder.spec import ACTIVATION_MODELS, LAYER_MODELS, ModelSpec, other_names
from specbuilder.training import TrainConfig
from specbuilder_wire.v1 import service_pb2
from specbuilder_wire.values import encode_value

BOUNDS = (
    ("minimum", "minimum", False, ">="),
    ("exclusiveMinimum", "minimum", True, ">"),
    ("maximum", "maximum", False, "<="),
    ("exclusiveMaximum", "maximum", True, "<"),
)
"""JSON schema bound keyword -> the ParameterInfo side it sets, whether it is exclusive, and its word for people."""
TARGET_KINDS = {"classification": "classes", "regression": "values"}
"""A dataset's task -> ``DatasetInfo.target_kind``."""


def _alternatives(schema: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The alternatives a property's schema accepts: its ``anyOf``, or the schema itself."""
    return list(schema.get("anyOf", [schema]))


def _kind(schema: Mapping[str, Any]) -> str:
    """The JSON value kind of one alternative; a schema of another form is a bug the registry tests catch."""
    if "type" in schema:
        return str(schema["type"])
    if schema.get("enum") and all(isinstance(value, str) for value in schema["enum"]):
        return "string"
    raise ValueError(f"no value kind in the parameter schema {schema}")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


@functools.cache
def _schema(model: type[EntrySpec]) -> dict[str, Any]:
    """A model's JSON schema, made once."""
    return model.model_json_schema()


def parameter_info(model: type[EntrySpec], name: str, inferred: bool) -> service_pb2.ParameterInfo:
    """Everything a client needs to give parameter ``name`` of ``model``: its value kinds, default, bounds (of each
    element, for a list), choices, whether a spec must give it, whether it is inferred from the input shape."""
    schema = _schema(model)["properties"][name]
    field = model.model_fields[name]
    alternatives = _alternatives(schema)
    values = [option for option in alternatives if option.get("type") != "null"]
    elements = [option["items"] for option in values if "items" in option]
    info = service_pb2.ParameterInfo(
        name=name, type=" | ".join(dict.fromkeys(_kind(option) for option in alternatives)),
        required=field.is_required(), inferred=inferred, items=_kind(elements[0]) if elements else "",
    )
    words = []
    for keyword, side, exclusive, word in BOUNDS:
        bound = next((place[keyword] for place in (*values, *elements) if keyword in place), None)
        if bound is not None:
            setattr(info, side, bound)
            setattr(info, f"exclusive_{side}", exclusive)
            words.append(f"{word} {_number(bound)}")
    info.choices.extend(choice for option in values for choice in option.get("enum", ()))
    if info.choices:
        words.append("one of " + ", ".join(map(repr, info.choices)))
    info.constraint = ", ".join(words)
    if not field.is_required():
        info.default.CopyFrom(encode_value(field.default, name))
    return info


def _parameters(kind: LayerKind, model: type[EntrySpec]) -> list[service_pb2.ParameterInfo]:
    return [parameter_info(model, name, name in kind.inferred) for name in kind.params]


def activation_info(kind: ActivationKind) -> service_pb2.ActivationInfo:
    """One activation: names, parameters, range at the defaults, formula, flat region."""
    model = ACTIVATION_MODELS[kind.name]
    low, high = kind.range_for(model.defaults())
    return service_pb2.ActivationInfo(
        name=kind.name, aliases=other_names(kind.name), summary=kind.summary, formula=kind.formula,
        parameters=_parameters(kind, model), range_min=low, range_max=high, flat_region=kind.flat.text if kind.flat else "",
    )


def layer_info(kind: LayerKind) -> service_pb2.LayerInfo:
    """One layer kind that is no activation: names, parameters, the torch module it compiles to."""
    return service_pb2.LayerInfo(
        name=kind.name, aliases=other_names(kind.name), summary=kind.summary,
        parameters=_parameters(kind, LAYER_MODELS[kind.name]), module=kind.module,
    )


def dataset_info(dataset: DatasetInfo) -> service_pb2.DatasetInfo:
    """One built-in dataset, at its default size."""
    return service_pb2.DatasetInfo(
        name=dataset.name, description=dataset.description, input_shape=dataset.input_shape,
        target_kind=TARGET_KINDS[dataset.task], classes=dataset.classes or 0, rows=dataset.n,
    )


@functools.cache
def activations() -> service_pb2.ListActivationsResponse:
    """ListActivations' answer: every activation, in the registry's order."""
    return service_pb2.ListActivationsResponse(activations=[activation_info(kind) for kind in ACTIVATIONS.values()])


@functools.cache
def layers() -> service_pb2.ListLayersResponse:
    """ListLayers' answer: every other layer kind, in the registry's order."""
    return service_pb2.ListLayersResponse(layers=[layer_info(kind) for kind in LAYERS.values()])


@functools.cache
def datasets() -> service_pb2.ListDatasetsResponse:
    """ListDatasets' answer: every built-in dataset."""
    return service_pb2.ListDatasetsResponse(datasets=[dataset_info(dataset) for dataset in DATASETS.values()])


@functools.cache
def schemas() -> service_pb2.GetSchemaResponse:
    """GetSchema's answer: the JSON Schemas of the spec (what ``specbuilder schema`` prints) and of the training config."""
    return service_pb2.GetSchemaResponse(
        spec_schema=json.dumps(ModelSpec.model_json_schema()), train_config_schema=json.dumps(TrainConfig.model_json_schema()),
    )
