"""The spec language: what a valid spec knows, and the exact errors an invalid one gets.

Tables of bad specs, each with the whole ``errors()`` list it must produce (path, message, type),
as pydantic's own tests do; hypothesis for inputs nobody thought of.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from specbuilder.compiler import FunctionalModel
from specbuilder.errors import SpecError
from specbuilder.spec import (
    DEFAULT_MAX_PARAMS,
    KINDS,
    MAX_SAMPLE_ELEMENTS,
    RESERVED_NAMES,
    TYPE_NAMES,
    ModelSpec,
    parse_spec,
)

TUTORIAL = {
    "name": "simple-nn",
    "input_shape": [10],
    "layers": [
        {"type": "linear", "out_features": 5, "name": "fc1"},
        {"type": "leaky_relu", "negative_slope": 0.01},
        {"type": "linear", "out_features": 1, "name": "fc2", "activation": "sigmoid"},
    ],
}


def spec_of(*layers: Any, shape: list[int] | None = None) -> dict[str, Any]:
    return {"input_shape": [10] if shape is None else shape, "layers": list(layers)}


def problems(source: Any, **kwargs: Any) -> list[tuple[str, str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(source, **kwargs)
    errors = info.value.errors()
    assert str(info.value) == "\n".join(f"{e['path']}: {e['message']}" if e["path"] else e["message"] for e in errors)
    return [(e["path"], e["message"], e["type"]) for e in errors]


# --- a valid spec ---------------------------------------------------------------------------


def test_tutorial_spec_nodes_shapes_and_names() -> None:
    spec = parse_spec(TUTORIAL)
    got = [(n.index, n.name, n.path, n.layer.type, n.in_shape, n.out_shape, dict(n.kwargs), n.num_params) for n in spec.nodes]
    assert got == [
        (0, "fc1", "layers[0]", "linear", (10,), (5,), {"in_features": 10, "out_features": 5, "bias": True}, 55),
        (1, "leaky_relu_1", "layers[1]", "leaky_relu", (5,), (5,), {"negative_slope": 0.01}, 0),
        (2, "fc2", "layers[2]", "linear", (5,), (1,), {"in_features": 5, "out_features": 1, "bias": True}, 6),
        (3, "sigmoid_3", "layers[2].activation", "sigmoid", (1,), (1,), {}, 0),
    ]
    assert (spec.output_shape, spec.num_params) == ((1,), 61)
    assert [n.is_activation for n in spec.nodes] == [False, True, False, True]


def test_samples_are_independent_unless_batch_norm_evaluates_with_the_batchs_statistics() -> None:
    assert parse_spec(TUTORIAL).samples_independent
    norm = {"input_shape": [4], "layers": [{"type": "batch_norm1d"}, {"type": "linear", "out_features": 2}]}
    assert parse_spec(norm).samples_independent, "running statistics: each sample alone"
    norm["layers"][0]["track_running_stats"] = False
    assert not parse_spec(norm).samples_independent


def test_summary_table() -> None:
    assert parse_spec(TUTORIAL).summary() == (
        "#  name          type        output shape  params\n"
        "-  ------------  ----------  ------------  ------\n"
        "0  fc1           linear      [N, 5]            55\n"
        "1  leaky_relu_1  leaky_relu  [N, 5]             0\n"
        "2  fc2           linear      [N, 1]             6\n"
        "3  sigmoid_3     sigmoid     [N, 1]             0\n"
        "input [N, 10] -> output [N, 1], 61 parameters"
    )


def test_json_round_trip_and_hash() -> None:
    spec = parse_spec(TUTORIAL)
    assert json.loads(spec.to_json()) == {
        "name": "simple-nn",
        "input_shape": [10],
        "layers": [
            {"type": "linear", "name": "fc1", "out_features": 5},
            {"type": "leaky_relu"},
            {"type": "linear", "name": "fc2", "out_features": 1, "activation": {"type": "sigmoid"}},
        ],
    }
    again = parse_spec(spec.to_json())
    assert again == spec and again.spec_hash() == spec.spec_hash() and len(spec.spec_hash()) == 64
    # Aliases, torch class names and explicit defaults are the same model, so the same hash.
    spelled = {**TUTORIAL, "layers": [
        {"type": "Linear", "out_features": 5, "name": "fc1", "bias": True},
        {"type": "LeakyReLU"},
        {"type": "linear", "out_features": 1, "name": "fc2", "activation": {"type": "logistic"}},
    ]}
    assert parse_spec(spelled).canonical_json() == spec.canonical_json()
    assert parse_spec({**TUTORIAL, "name": "other"}).spec_hash() != spec.spec_hash()


def test_parse_spec_accepts_every_source(tmp_path: Any) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(TUTORIAL))
    spec = parse_spec(TUTORIAL)
    for source in (spec, json.dumps(TUTORIAL), json.dumps(TUTORIAL).encode(), path):
        assert parse_spec(source) == spec


def test_a_spec_is_frozen() -> None:
    spec = parse_spec(TUTORIAL)
    with pytest.raises(ValidationError, match="frozen"):
        spec.name = "changed"  # type: ignore[misc]


# --- shape errors ---------------------------------------------------------------------------

SHAPE_ERRORS = {
    "in_features disagrees": (
        spec_of({"type": "linear", "in_features": 4, "out_features": 3}),
        [("layers[0].in_features", "the input has 10 features (its last dimension), got 4; drop in_features to infer it", "shape")],
    ),
    "in_features disagrees after a layer": (
        spec_of({"type": "linear", "out_features": 8}, {"type": "relu"}, {"type": "linear", "in_features": 10, "out_features": 2}),
        [("layers[2].in_features", "the input has 8 features (its last dimension), got 10; drop in_features to infer it", "shape")],
    ),
    "conv on a 1-D input": (
        spec_of({"type": "conv1d", "out_channels": 4, "kernel_size": 3}),
        [("layers[0]", "conv1d needs a per-sample input shaped [C, L], got [10]; set input_shape or add an unflatten layer before it", "shape")],
    ),
    "conv2d on a [C, L] input": (
        spec_of({"type": "conv2d", "out_channels": 4, "kernel_size": 3}, shape=[3, 8]),
        [("layers[0]", "conv2d needs a per-sample input shaped [C, H, W], got [3, 8]; set input_shape or add an unflatten layer before it", "shape")],
    ),
    "kernel larger than input": (
        spec_of({"type": "conv1d", "out_channels": 4, "kernel_size": 5}, shape=[2, 4]),
        [("layers[0].kernel_size", "kernel of extent 5 is larger than the spatial input size 4", "shape")],
    ),
    "dilated kernel larger than padded input": (
        spec_of({"type": "conv2d", "out_channels": 1, "kernel_size": 3, "dilation": 3, "padding": 1}, shape=[1, 4, 4]),
        [("layers[0].kernel_size", "kernel of extent 7 is larger than the spatial input size 4 padded to 6", "shape")],
    ),
    "in_channels disagrees": (
        spec_of({"type": "conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3}, shape=[3, 8, 8]),
        [("layers[0].in_channels", "the input has 3 channels (its first dimension), got 1; drop in_channels to infer it", "shape")],
    ),
    "groups do not divide": (
        spec_of({"type": "conv1d", "out_channels": 4, "kernel_size": 1, "groups": 3}, shape=[3, 8]),
        [("layers[0].groups", "must divide in_channels (3) and out_channels (4), got 3", "shape")],
    ),
    "padding same with stride": (
        spec_of({"type": "conv1d", "out_channels": 4, "kernel_size": 3, "padding": "same", "stride": 2}, shape=[3, 8]),
        [("layers[0].padding", "padding 'same' needs stride 1", "shape")],
    ),
    "pool padding over half the kernel": (
        spec_of({"type": "max_pool2d", "kernel_size": 2, "padding": 2}, shape=[1, 8, 8]),
        [("layers[0].padding", "must be at most half the kernel size (1), got 2", "shape")],
    ),
    "softmax dim out of range": (
        spec_of({"type": "softmax", "dim": 2}),
        [("layers[0].dim", "must be in [-2, 1] for an input of shape [N, 10], got 2", "shape")],
    ),
    "softmax dim too negative": (
        spec_of({"type": "softmax", "dim": -4}, shape=[2, 5]),
        [("layers[0].dim", "must be in [-3, 2] for an input of shape [N, 2, 5], got -4", "shape")],
    ),
    "glu odd size": (
        spec_of({"type": "glu"}, shape=[5]),
        [("layers[0].dim", "glu halves dimension -1, which has odd size 5", "shape")],
    ),
    "glu odd size in shorthand": (
        spec_of({"type": "linear", "out_features": 5, "activation": "glu"}),
        [("layers[0].activation.dim", "glu halves dimension -1, which has odd size 5", "shape")],
    ),
    "glu on the batch dim": (
        spec_of({"type": "glu", "dim": 0}),
        [("layers[0].dim", "cannot split the batch dimension; pick a feature dimension", "shape")],
    ),
    "flatten of batch dim": (
        spec_of({"type": "flatten", "start_dim": 0}, shape=[2, 5]),
        [("layers[0].start_dim", "would flatten the batch dimension; must be >= 1", "shape")],
    ),
    "flatten end before start": (
        spec_of({"type": "flatten", "start_dim": 2, "end_dim": 1}, shape=[2, 5]),
        [("layers[0].end_dim", "must not come before start_dim (2), got 1", "shape")],
    ),
    "unflatten product mismatch": (
        spec_of({"type": "unflatten", "dim": 1, "unflattened_size": [4, 2]}, shape=[6]),
        [("layers[0].unflattened_size", "must multiply to 6, the size of dimension 1, got [4, 2]", "shape")],
    ),
    "unflatten -1 that does not divide": (
        spec_of({"type": "unflatten", "dim": 1, "unflattened_size": [4, -1]}, shape=[6]),
        [("layers[0].unflattened_size", "cannot split dimension 1 of size 6 into [4, -1]", "shape")],
    ),
    "unflatten two -1": (
        spec_of({"type": "unflatten", "dim": 1, "unflattened_size": [-1, -1]}, shape=[6]),
        [("layers[0].unflattened_size", "must be sizes >= 1 with at most one -1, got [-1, -1]", "shape")],
    ),
    "unflatten the batch dim": (
        spec_of({"type": "unflatten", "dim": 0, "unflattened_size": [2, 3]}, shape=[6]),
        [("layers[0].dim", "would split the batch dimension; pick a feature dimension", "shape")],
    ),
    "layer_norm shape mismatch": (
        spec_of({"type": "layer_norm", "normalized_shape": [3, 5]}, shape=[2, 5]),
        [("layers[0].normalized_shape", "must equal the trailing dimensions of the input [2, 5], got [3, 5]", "shape")],
    ),
    "batch_norm2d on features": (
        spec_of({"type": "batch_norm2d"}),
        [("layers[0]", "batch_norm2d needs a per-sample input shaped [C, H, W], got [10]; set input_shape or add an unflatten layer before it", "shape")],
    ),
    "hardtanh min above max": (
        spec_of({"type": "hardtanh", "min_val": 1.0, "max_val": 1.0}),
        [("layers[0].max_val", "must be > min_val (1.0), got 1.0", "shape")],
    ),
    "rrelu upper below lower": (
        spec_of({"type": "rrelu", "lower": 0.3, "upper": 0.2}),
        [("layers[0].upper", "must be >= lower (0.3), got 0.2", "shape")],
    ),
    "prelu parameters not channels": (
        spec_of({"type": "prelu", "num_parameters": 3}, shape=[4, 6]),
        [("layers[0].num_parameters", "must be 1 or the number of channels (4), got 3", "shape")],
    ),
    "duplicate names": (
        spec_of({"type": "linear", "out_features": 4, "name": "fc"}, {"type": "relu"}, {"type": "linear", "out_features": 2, "name": "fc"}),
        [("layers[2].name", "name 'fc' is already used by layers[0]; names must be unique", "duplicate_name")],
    ),
    "duplicate of an automatic name": (
        spec_of({"type": "relu"}, {"type": "tanh", "name": "relu_0"}),
        [("layers[1].name", "name 'relu_0' is already used by layers[0]; names must be unique", "duplicate_name")],
    ),
    "automatic name taken": (
        spec_of({"type": "relu", "name": "tanh_1"}, {"type": "tanh"}),
        [("layers[1].name", "automatic name 'tanh_1' is already used by layers[0]; names must be unique", "duplicate_name")],
    ),
    "shorthand duplicates a name": (
        spec_of({"type": "linear", "out_features": 4, "activation": {"type": "relu", "name": "act"}}, {"type": "tanh", "name": "act"}),
        [("layers[1].name", "name 'act' is already used by layers[0].activation; names must be unique", "duplicate_name")],
    ),
    "too many elements per sample at the input": (
        spec_of({"type": "relu"}, shape=[100_000, 10_000]),
        [("input_shape", "has 1,000,000,000 elements per sample, over the limit of 100,000,000", "too_large")],
    ),
    "too many elements per sample after a layer": (
        spec_of({"type": "linear", "out_features": 20_000}, shape=[10_000, 100]),
        [("layers[0]", "outputs 200,000,000 elements per sample, over the limit of 100,000,000", "too_large")],
    ),
    "thirty billion parameters": (
        spec_of({"type": "linear", "out_features": 150_000}, shape=[200_000]),
        [("layers", "the model has 30,000,150,000 parameters, over the limit of 100,000,000 (max_params)", "too_many_parameters")],
    ),
}


@pytest.mark.parametrize(("source", "expected"), list(SHAPE_ERRORS.values()), ids=list(SHAPE_ERRORS))
def test_shape_error(source: dict[str, Any], expected: list[tuple[str, str, str]]) -> None:
    assert problems(source) == expected


def test_duplicates_and_shape_errors_are_reported_together() -> None:
    source = spec_of({"type": "relu", "name": "a"}, {"type": "relu", "name": "a"}, {"type": "linear", "in_features": 3, "out_features": 2})
    assert problems(source) == [
        ("layers[1].name", "name 'a' is already used by layers[0]; names must be unique", "duplicate_name"),
        ("layers[2].in_features", "the input has 10 features (its last dimension), got 3; drop in_features to infer it", "shape"),
    ]


def test_parameter_budget_is_a_choice() -> None:
    big = spec_of({"type": "linear", "out_features": 150_000}, shape=[200_000])
    assert parse_spec(big, max_params=None).num_params == 30_000_150_000
    assert problems(spec_of({"type": "linear", "out_features": 10}), max_params=100) == [
        ("layers", "the model has 110 parameters, over the limit of 100 (max_params)", "too_many_parameters"),
    ]
    assert parse_spec(spec_of({"type": "linear", "out_features": 10}), max_params=110).num_params == 110
    assert DEFAULT_MAX_PARAMS == 100_000_000 and MAX_SAMPLE_ELEMENTS == 100_000_000


def test_elements_limit_is_inclusive() -> None:
    assert parse_spec(spec_of({"type": "relu"}, shape=[10_000, 10_000])).output_shape == (10_000, 10_000)


# --- names ----------------------------------------------------------------------------------


def test_reserved_names_cover_every_attribute_a_compiled_module_has() -> None:
    public = {name for cls in (torch.nn.Module, torch.nn.Sequential, FunctionalModel) for name in dir(cls) if not name.startswith("_")}
    # ``training`` is set in __init__ and ``spec`` by the compiler: instance attributes dir(cls) misses.
    assert public | {"training", "spec"} <= RESERVED_NAMES
    assert RESERVED_NAMES <= public | {"training", "spec"}, "a reserved name no class has any more"


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES | {"class", "None", "lambda", "def"}))
def test_reserved_name_is_rejected(name: str) -> None:
    assert problems(spec_of({"type": "relu", "name": name})) == [
        ("layers[0].name", f"'{name}' is reserved by Python or torch.nn.Module; pick another", "reserved_name"),
    ]


def test_names_that_only_look_reserved_are_fine() -> None:
    spec = parse_spec(spec_of({"type": "relu", "name": "Forward"}, {"type": "relu", "name": "train_1"}, {"type": "relu", "name": "specs"}))
    assert [n.name for n in spec.nodes] == ["Forward", "train_1", "specs"]


# --- the catalog of bad specs ---------------------------------------------------------------

NAME_PATTERN = "must match ^[A-Za-z][A-Za-z0-9_]*$"
CATALOG = {
    "unknown type, did you mean": (
        spec_of({"type": "linearr", "out_features": 5}),
        [("layers[0].type", "unknown layer type 'linearr'; did you mean 'linear'?", "unknown_type")],
    ),
    "unknown type, no suggestion": (
        spec_of({"type": "transformer"}),
        [("layers[0].type", "unknown layer type 'transformer'", "unknown_type")],
    ),
    "unknown activation, did you mean": (
        spec_of({"type": "linear", "out_features": 5, "activation": "reluu"}),
        [("layers[0].activation.type", "unknown activation 'reluu'; did you mean 'relu'?", "unknown_type")],
    ),
    "a layer that is no activation as activation": (
        spec_of({"type": "linear", "out_features": 5, "activation": "linear"}),
        [("layers[0].activation.type", "unknown activation 'linear'", "unknown_type")],
    ),
    "type not a string": (
        spec_of({"type": 5}),
        [("layers[0].type", "must be a string: a layer type such as 'linear' or 'relu', got int 5", "string_type")],
    ),
    "type missing": (
        spec_of({"out_features": 5}),
        [("layers[0].type", "is required: a layer type such as 'linear' or 'relu'", "missing")],
    ),
    "activation type missing": (
        spec_of({"type": "linear", "out_features": 5, "activation": {"negative_slope": 0.1}}),
        [("layers[0].activation.type", "is required: an activation such as 'relu' or 'tanh'", "missing")],
    ),
    "unknown field with suggestion (and the missing one)": (
        spec_of({"type": "linear", "out_feature": 5}),
        [
            ("layers[0].out_features", "is required", "missing"),
            ("layers[0].out_feature", "unknown field 'out_feature'; did you mean 'out_features'?", "extra_forbidden"),
        ],
    ),
    "unknown top-level field with suggestion": (
        {**spec_of({"type": "relu"}), "nmae": "x"},
        [("nmae", "unknown field 'nmae'; did you mean 'name'?", "extra_forbidden")],
    ),
    "unknown activation field": (
        spec_of({"type": "linear", "out_features": 5, "activation": {"type": "elu", "alpa": 0.5}}),
        [("layers[0].activation.alpa", "unknown field 'alpa'; did you mean 'alpha'?", "extra_forbidden")],
    ),
    "NaN": (
        spec_of({"type": "leaky_relu", "negative_slope": math.nan}),
        [("layers[0].negative_slope", "must be a finite number, got nan", "finite_number")],
    ),
    "inf": (
        spec_of({"type": "elu", "alpha": math.inf}),
        [("layers[0].alpha", "must be a finite number, got inf", "finite_number")],
    ),
    "-Infinity in JSON text": (
        '{"input_shape": [10], "layers": [{"type": "hardtanh", "min_val": -Infinity}]}',
        [("layers[0].min_val", "must be a finite number, got -inf", "finite_number")],
    ),
    "string for an int": (
        spec_of({"type": "linear", "out_features": "5"}),
        [("layers[0].out_features", "must be an integer, got str '5'", "int_type")],
    ),
    "float for an int": (
        spec_of({"type": "linear", "out_features": 5.0}),
        [("layers[0].out_features", "must be an integer, got float 5", "int_type")],
    ),
    "bool for an int": (
        spec_of({"type": "softmax", "dim": True}),
        [("layers[0].dim", "must be an integer, got bool True", "int_type")],
    ),
    "int for a bool": (
        spec_of({"type": "linear", "out_features": 5, "bias": 1}),
        [("layers[0].bias", "must be true or false, got int 1", "bool_type")],
    ),
    "string for a float": (
        spec_of({"type": "leaky_relu", "negative_slope": "0.1"}),
        [("layers[0].negative_slope", "must be a number, got str '0.1'", "float_type")],
    ),
    "missing required field": (
        spec_of({"type": "linear"}),
        [("layers[0].out_features", "is required", "missing")],
    ),
    "missing two fields, one named like its type": (
        spec_of({"type": "threshold"}),
        [("layers[0].threshold", "is required", "missing"), ("layers[0].value", "is required", "missing")],
    ),
    "missing input_shape": (
        {"layers": [{"type": "relu"}]},
        [("input_shape", "is required", "missing")],
    ),
    "empty layers": (
        spec_of(),
        [("layers", "must have at least 1 item, got 0", "too_short")],
    ),
    "too many layers": (
        spec_of(*[{"type": "relu"}] * 1025),
        [("layers", "must have at most 1024 items, got 1025", "too_long")],
    ),
    "layers not a list": (
        {"input_shape": [3], "layers": {"type": "relu"}},
        [("layers", "must be a list, got dict {'type': 'relu'}", "list_type")],
    ),
    "layer not an object": (
        spec_of("relu"),
        [("layers[0]", "must be an object, got str 'relu'", "model_attributes_type")],
    ),
    "spec not an object": (
        "[1, 2]",
        [("", "must be an object, got list [1, 2]", "model_type")],
    ),
    "not JSON": (
        "{not json",
        [("", "Invalid JSON: key must be a string at line 1 column 2", "json_invalid")],
    ),
    "empty input_shape": (
        spec_of({"type": "relu"}, shape=[]),
        [("input_shape", "must have at least 1 item, got 0", "too_short")],
    ),
    "five-dimensional input_shape": (
        spec_of({"type": "relu"}, shape=[1, 2, 3, 4, 5]),
        [("input_shape", "must have at most 4 items, got 5", "too_long")],
    ),
    "zero in input_shape": (
        spec_of({"type": "relu"}, shape=[3, 0]),
        [("input_shape[1]", "must be >= 1, got 0", "greater_than_equal")],
    ),
    "name starting with a digit": (
        spec_of({"type": "linear", "out_features": 5, "name": "1fc"}),
        [("layers[0].name", f"{NAME_PATTERN}, got '1fc'", "string_pattern_mismatch")],
    ),
    "name with a dash": (
        spec_of({"type": "linear", "out_features": 5, "name": "fc-1"}),
        [("layers[0].name", f"{NAME_PATTERN}, got 'fc-1'", "string_pattern_mismatch")],
    ),
    "name that injects code": (
        spec_of({"type": "relu", "name": "x = __import__('os')"}),
        [("layers[0].name", f"{NAME_PATTERN}, got \"x = __import__('os')\"", "string_pattern_mismatch")],
    ),
    "empty name": (
        spec_of({"type": "relu", "name": ""}),
        [("layers[0].name", f"{NAME_PATTERN}, got ''", "string_pattern_mismatch")],
    ),
    "name too long": (
        spec_of({"type": "relu", "name": "a" * 65}),
        [("layers[0].name", "must have at most 64 characters, got 65", "string_too_long")],
    ),
    "model name with a space": (
        {**spec_of({"type": "relu"}), "name": "my model"},
        [("name", "must match ^[A-Za-z0-9][A-Za-z0-9_.-]*$, got 'my model'", "string_pattern_mismatch")],
    ),
    "literal out of choices": (
        spec_of({"type": "gelu", "approximate": "fast"}),
        [("layers[0].approximate", "must be one of 'none' or 'tanh', got 'fast'", "literal_error")],
    ),
    "bad padding word": (
        spec_of({"type": "conv1d", "out_channels": 2, "kernel_size": 3, "padding": "full"}, shape=[2, 8]),
        [("layers[0].padding", "must be an integer >= 0 or a list of two, or one of 'same', 'valid', got 'full'", "int_or_pair")],
    ),
    "kernel of three sizes": (
        spec_of({"type": "conv2d", "out_channels": 2, "kernel_size": [1, 2, 3]}, shape=[1, 4, 4]),
        [("layers[0].kernel_size", "must be an integer >= 1 or a list of two, got [1, 2, 3]", "int_or_pair")],
    ),
    "zero in a kernel pair": (
        spec_of({"type": "conv2d", "out_channels": 2, "kernel_size": [0, 1]}, shape=[1, 4, 4]),
        [("layers[0].kernel_size", "must be >= 1, got [0, 1]", "greater_than_equal")],
    ),
    "size over 2**31 - 1": (
        spec_of({"type": "linear", "out_features": 2**31}),
        [("layers[0].out_features", "must be <= 2147483647, got 2147483648", "less_than_equal")],
    ),
    "empty normalized_shape": (
        spec_of({"type": "layer_norm", "normalized_shape": []}),
        [("layers[0].normalized_shape", "must have at least 1 item, got 0", "too_short")],
    ),
    "nested activation": (
        spec_of({"type": "linear", "out_features": 5, "activation": {"type": "relu", "activation": "relu"}}),
        [("layers[0].activation.activation", "unknown field 'activation'", "extra_forbidden")],
    ),
    "every problem at once, in order": (
        spec_of({"type": "linearr", "out_features": 5}, {"type": "relu", "alpha": 1}, {"type": "linear", "out_features": -1}),
        [
            ("layers[0].type", "unknown layer type 'linearr'; did you mean 'linear'?", "unknown_type"),
            ("layers[1].alpha", "unknown field 'alpha'", "extra_forbidden"),
            ("layers[2].out_features", "must be >= 1, got -1", "greater_than_equal"),
        ],
    ),
}


def test_catalog_is_large() -> None:
    assert len(CATALOG) >= 20


@pytest.mark.parametrize(("source", "expected"), list(CATALOG.values()), ids=list(CATALOG))
def test_bad_spec(source: Any, expected: list[tuple[str, str, str]]) -> None:
    assert problems(source) == expected


@pytest.mark.parametrize(("source", "expected"), [v for v in CATALOG.values() if isinstance(v[0], dict)], ids=[k for k, v in CATALOG.items() if isinstance(v[0], dict)])
def test_bad_spec_as_json_text_gives_the_same_errors(source: dict[str, Any], expected: list[tuple[str, str, str]]) -> None:
    assert problems(json.dumps(source)) == expected


def test_model_validate_raises_the_same_problems_as_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        ModelSpec.model_validate(spec_of({"type": "linear", "out_features": "5"}))
    assert [(e["loc"], e["msg"], e["type"]) for e in info.value.errors()] == [
        (("layers", 0, "out_features"), "must be an integer, got str '5'", "int_type"),
    ]


# --- hypothesis: nothing but SpecError ------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
GARBAGE = st.dictionaries(st.text(max_size=8).filter(lambda k: k != "type"), JSON_VALUES, min_size=1, max_size=3)
"""A non-empty object without ``type``: invalid wherever a spec expects anything."""


def valid_source(kind_name: str) -> dict[str, Any]:
    kind = KINDS[kind_name]
    return {"name": "m", "input_shape": list(kind.sample_shape), "layers": [{"type": kind_name, **kind.example, "name": "first"}, {"type": "identity"}]}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += paths(item, (*prefix, index))
    return out


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = new if len(path) == 1 else replaced(value[path[0]], path[1:], new)
    return copy


def removed(value: Any, path: tuple[Any, ...]) -> Any:
    copy = dict(value) if isinstance(value, dict) else list(value)
    if len(path) == 1:
        del copy[path[0]]
    else:
        copy[path[0]] = removed(value[path[0]], path[1:])
    return copy


@st.composite
def invalid_specs(draw: st.DrawFn) -> Any:
    source = valid_source(draw(st.sampled_from(sorted(KINDS))))
    how = draw(st.sampled_from(["garbage", "unknown field", "unknown type", "drop required", "wrong container"]))
    if how == "garbage":
        return replaced(source, draw(st.sampled_from(paths(source))), draw(GARBAGE))
    if how == "unknown field":
        where = draw(st.sampled_from([(), ("layers", 0), ("layers", 1)]))
        key = "unknown_" + draw(st.text(max_size=8))  # no field starts so
        return replaced(source, (*where, key), draw(JSON_VALUES))
    if how == "unknown type":
        name = draw(st.text(max_size=12).filter(lambda t: t.lower() not in TYPE_NAMES))
        return replaced(source, ("layers", draw(st.integers(0, 1)), "type"), name)
    if how == "drop required":
        required = [("input_shape",), ("layers",), ("layers", 0, "type"), ("layers", 1, "type")]
        return removed(source, draw(st.sampled_from(required)))
    return draw(st.lists(JSON_VALUES, max_size=3) | JSON_SCALARS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invalid_specs())
def test_invalid_specs_raise_spec_error_only(source: Any) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(source)
    assert info.value.errors() and all(e["message"] and e["type"] for e in info.value.errors())
    # The same input as JSON text (where it can be written) fails the same way.
    try:
        text = json.dumps(source)
    except ValueError:
        return
    with pytest.raises(SpecError):
        parse_spec(text)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40) | st.binary(max_size=40))
def test_arbitrary_text_raises_spec_error_only(text: str | bytes) -> None:
    with pytest.raises(SpecError):
        parse_spec(text)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(KINDS)), st.sampled_from(["input_shape", "layers"]), JSON_VALUES)
def test_any_value_anywhere_is_valid_or_a_spec_error(kind_name: str, field: str, value: Any) -> None:
    source = {**valid_source(kind_name), field: value}
    try:
        spec = parse_spec(source)
    except SpecError as error:
        assert error.errors()
    else:
        assert isinstance(spec, ModelSpec)
