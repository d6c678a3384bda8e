"""The service describes itself: ListLayers, ListActivations, ListDatasets and GetSchema tell a client in any
language everything it needs to build a spec or a training config, and what they say is what the server does.

Every parameter's facts are held to ValidateSpec's behaviour: an "integer" refuses 8.0, a "number" takes an
int, a value past a bound is refused at its path, a required one left out is missing, a default left out is
the one the spec gets. Every listed name is accepted, and no other is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from server_helpers import SPIRALS, spec_source
from specbuilder.activations import ACTIVATIONS
from specbuilder.datasets import DATASETS, load_dataset
from specbuilder.layers import LAYERS
from specbuilder.spec import KINDS, LAYER_MODELS, TYPE_NAMES, ModelSpec, parse_spec
from specbuilder.training import TrainConfig
from specbuilder_wire.v1 import service_pb2 as pb
from specbuilder_wire.v1.service_pb2_grpc import ModelServiceStub as Stub
from specbuilder_wire.values import decode_value

ROOT = Path(__file__).resolve().parent.parent
Info = Any
"""A ``LayerInfo`` or an ``ActivationInfo``: a kind as the service lists it."""


@pytest.fixture(scope="module")
def listed(stub: Stub) -> dict[str, Info]:
    """Every kind the service lists, layers and activations, by name."""
    layers = stub.ListLayers(pb.ListLayersRequest()).layers
    activations = stub.ListActivations(pb.ListActivationsRequest()).activations
    return {info.name: info for info in [*layers, *activations]}


def test_list_layers_lists_every_layer_kind_once_in_the_registry_order_and_no_activation(stub: Stub) -> None:
    layers = stub.ListLayers(pb.ListLayersRequest()).layers
    assert [info.name for info in layers] == list(LAYERS)
    assert not {info.name for info in layers} & set(ACTIVATIONS)
    for info in layers:
        kind = LAYERS[info.name]
        assert (info.summary, info.module) == (kind.summary, kind.module)
        assert info.module.startswith("torch.nn.")


def test_list_activations_lists_every_activation_once(stub: Stub) -> None:
    assert [info.name for info in stub.ListActivations(pb.ListActivationsRequest()).activations] == list(ACTIVATIONS)


def violations(stub: Stub, name: str, **params: Any) -> dict[str, str]:
    """ValidateSpec's violations (path: type) for one layer of kind ``name``: its registry example with ``params``
    on top (a value of None leaves the parameter out), on the kind's sample input shape."""
    kind = KINDS[name]
    layer = {"type": name, **kind.example, **params}
    layer = {key: value for key, value in layer.items() if value is not None}
    spec = {"input_shape": list(kind.sample_shape), "layers": [layer]}
    answer = stub.ValidateSpec(pb.ValidateSpecRequest(spec=spec_source(spec)))
    return {violation.path: violation.type for violation in answer.violations}


def past(bound: float, kinds: list[str], below: bool) -> float:
    """A value just past ``bound``: by 1 for an integer, by a half otherwise."""
    step = 1 if "integer" in kinds else 0.5
    return bound - step if below else bound + step


@pytest.mark.parametrize("name", list(KINDS))
def test_every_parameter_fact_is_what_validation_does(stub: Stub, listed: dict[str, Info], name: str) -> None:
    info = listed[name]
    kind, model = KINDS[name], LAYER_MODELS[name]
    assert [parameter.name for parameter in info.parameters] == list(kind.params)
    for parameter in info.parameters:
        path = f"layers[0].{parameter.name}"
        field = model.model_fields[parameter.name]
        kinds = parameter.type.split(" | ")
        assert kinds and set(kinds) <= {"integer", "number", "boolean", "string", "array", "null"}, parameter
        assert ("null" in kinds) == (field.default is None and not parameter.required)
        assert bool(parameter.items) == ("array" in kinds)
        assert parameter.inferred == (parameter.name in kind.inferred)
        assert parameter.required == field.is_required() == (not parameter.HasField("default"))
        if parameter.required:
            if parameter.name in kind.example:
                assert violations(stub, name, **{parameter.name: None}) == {path: "missing"}
        else:
            assert decode_value(parameter.default) == field.default
            spec = parse_spec({"input_shape": list(kind.sample_shape), "layers": [{"type": name, **kind.example}]})
            if parameter.name not in kind.example and parameter.name not in kind.inferred:
                assert getattr(spec.layers[0], parameter.name) == field.default
        if "integer" in kinds or parameter.items == "integer":
            assert path in violations(stub, name, **{parameter.name: 8.0}), f"{name}.{parameter.name} took 8.0"
        if "number" in kinds and isinstance(field.default, float) and field.default.is_integer():
            assert path not in violations(stub, name, **{parameter.name: int(field.default)}), f"{name}.{parameter.name} refused an int"
        if parameter.HasField("minimum"):
            low = parameter.minimum if parameter.exclusive_minimum else past(parameter.minimum, kinds, below=True)
            assert path in violations(stub, name, **{parameter.name: _typed(low, kinds)})
        if parameter.HasField("maximum"):
            high = parameter.maximum if parameter.exclusive_maximum else past(parameter.maximum, kinds, below=False)
            assert path in violations(stub, name, **{parameter.name: _typed(high, kinds)})
        if parameter.choices:
            assert "string" in kinds and path in violations(stub, name, **{parameter.name: "no_such_choice"})
        assert parameter.constraint == constraint(parameter)


def _typed(value: float, kinds: list[str]) -> float:
    return int(value) if "integer" in kinds else value


def constraint(parameter: pb.ParameterInfo) -> str:
    """The constraint text the facts make: the bounds, then the choices."""
    def shown(value: float) -> str:
        return str(int(value)) if value.is_integer() else f"{value:g}"

    words = []
    if parameter.HasField("minimum"):
        words.append(f"{'>' if parameter.exclusive_minimum else '>='} {shown(parameter.minimum)}")
    if parameter.HasField("maximum"):
        words.append(f"{'<' if parameter.exclusive_maximum else '<='} {shown(parameter.maximum)}")
    if parameter.choices:
        words.append("one of " + ", ".join(map(repr, parameter.choices)))
    return ", ".join(words)


def test_the_issues_example_integer_and_number_facts(listed: dict[str, Info]) -> None:
    """A JavaScript client can now tell that ``out_features: 8.0`` is refused while ``negative_slope: 1`` is accepted."""
    out_features = next(p for p in listed["linear"].parameters if p.name == "out_features")
    slope = next(p for p in listed["leaky_relu"].parameters if p.name == "negative_slope")
    assert (out_features.type, out_features.required, out_features.minimum) == ("integer", True, 1)
    assert (slope.type, slope.minimum, slope.exclusive_minimum, decode_value(slope.default)) == ("number", 0, False, 0.01)
    in_features = next(p for p in listed["linear"].parameters if p.name == "in_features")
    assert in_features.inferred and in_features.type == "integer | null"
    kernel = next(p for p in listed["conv2d"].parameters if p.name == "kernel_size")
    assert (kernel.type, kernel.items) == ("integer | array", "integer")
    padding = next(p for p in listed["conv2d"].parameters if p.name == "padding")
    assert list(padding.choices) == ["same", "valid"]


@pytest.mark.parametrize("name", list(KINDS))
def test_every_listed_name_and_the_torch_class_name_are_accepted_and_no_other(stub: Stub, listed: dict[str, Info], name: str) -> None:
    info, kind = listed[name], KINDS[name]
    class_name = kind.module.rpartition(".")[2]
    names = [name, *info.aliases, class_name]
    for spelling in {*names, *(n.upper() for n in names), *(n.lower() for n in names)}:
        assert violations(stub, name, type=spelling) == {}, spelling
    assert {n.lower() for n in (name, *info.aliases)} == {spelling for spelling, canonical in TYPE_NAMES.items() if canonical == name}
    assert len({n.lower() for n in info.aliases}) == len(info.aliases) and name.lower() not in {n.lower() for n in info.aliases}


def test_list_datasets_lists_every_built_in_dataset_as_it_is(stub: Stub) -> None:
    datasets = stub.ListDatasets(pb.ListDatasetsRequest()).datasets
    assert [info.name for info in datasets] == list(DATASETS)
    for info in datasets:
        data = load_dataset(info.name)
        assert data.x.shape == (info.rows, *info.input_shape), info.name
        assert info.description == DATASETS[info.name].description and info.description and "\n" not in info.description
        if info.target_kind == "classes":
            assert data.y.dtype == np.int64 and info.classes == int(data.y.max()) + 1
        else:
            assert info.target_kind == "values" and data.y.dtype == np.float32 and info.classes == 0


@pytest.fixture(scope="module")
def schemas(stub: Stub) -> pb.GetSchemaResponse:
    return stub.GetSchema(pb.GetSchemaRequest())


def test_get_schema_sends_the_schema_specbuilder_schema_prints_and_the_training_configs(schemas: pb.GetSchemaResponse) -> None:
    spec_schema, config_schema = json.loads(schemas.spec_schema), json.loads(schemas.train_config_schema)
    assert spec_schema == ModelSpec.model_json_schema() and config_schema == TrainConfig.model_json_schema()
    for schema in (spec_schema, config_schema):
        jsonschema.Draft202012Validator.check_schema(schema)
    assert list(jsonschema.Draft202012Validator(spec_schema).iter_errors(SPIRALS)) == []
    refused = {**SPIRALS, "layers": [{"type": "linear", "out_feature": 2}]}
    assert list(jsonschema.Draft202012Validator(spec_schema).iter_errors(refused))
    assert list(jsonschema.Draft202012Validator(config_schema).iter_errors({"epochs": 3, "optimizer": "sgd"})) == []


def documented_config_keys() -> list[str]:
    """The keys TrainRequest.config's comment in service.proto lists."""
    proto = (ROOT / "protos" / "specbuilder" / "v1" / "service.proto").read_text()
    comment = re.search(r"the keys are:\n(.*?)\n\s*// A choice is", proto, re.S)
    assert comment, "service.proto no longer lists TrainRequest.config's keys"
    text = re.sub(r"\s*//\s*", " ", comment.group(1))
    return re.findall(r"(?:^|, |\), |\. )\s*([a-z_]+) \(", text)


def test_every_config_key_the_proto_documents_is_in_the_schema_and_back(schemas: pb.GetSchemaResponse) -> None:
    keys = documented_config_keys()
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(json.loads(schemas.train_config_schema)["properties"])
