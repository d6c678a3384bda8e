"""The protobuf encoding of the spec: lossless both ways, the same errors as JSON, generated code in step.

Round trips run JSON -> ModelSpec -> message -> bytes -> message -> ModelSpec -> JSON for every
layer and activation type in the registries; bad messages must fail exactly as the same spec
written as JSON does, plus the problems only a message can have (a ``Value`` with no kind set).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import protogen  # tools/protogen.py, on the tests' path (pyproject.toml)
import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor_pb2 import DescriptorProto, FileDescriptorProto

from specbuilder.errors import SpecError
from specbuilder.layers import LAYERS
from specbuilder.proto import spec_from_bytes, spec_from_proto, spec_to_bytes, spec_to_proto
from specbuilder.spec import KINDS, LAYER_MODELS, ModelSpec, parse_spec
from specbuilder_wire.v1 import spec_pb2
from specbuilder_wire.values import EMPTY_VALUE, RESERVED_KEY, decode_value, encode_value

ROOT = Path(__file__).resolve().parent.parent
SHORTHAND = {"type": "step", "name": "gate", "threshold": 0.5, "surrogate": "ste"}
"""The ``activation`` shorthand, with parameters, given to every non-activation layer."""


def example_spec(type_name: str) -> dict[str, Any]:
    """A one-layer spec of this type with its registry example, named, on its sample shape."""
    kind = KINDS[type_name]
    layer: dict[str, Any] = {"type": type_name, "name": "first", **kind.example}
    if type_name in LAYERS:
        layer["activation"] = dict(SHORTHAND)
    return {"name": f"round-trip.{type_name}", "input_shape": list(kind.sample_shape), "layers": [layer]}


def raw_message(spec: dict[str, Any]) -> spec_pb2.ModelSpec:
    """A message spelling ``spec`` (a JSON-like dict) as it stands, unvalidated: how a client may send anything."""

    def layer(raw: dict[str, Any]) -> spec_pb2.Layer:
        out = spec_pb2.Layer(type=raw.get("type", ""))
        for key, value in raw.items():
            if key == "name":
                out.name = value
            elif key == "activation":
                out.activation.CopyFrom(layer({"type": value} if isinstance(value, str) else value))
            elif key != "type":
                out.params[key].CopyFrom(encode_value(value))
        return out

    message = spec_pb2.ModelSpec(input_shape=spec.get("input_shape", []), layers=[layer(raw) for raw in spec.get("layers", [])])
    if "name" in spec:
        message.name = spec["name"]
    return message


def wire(message: spec_pb2.ModelSpec) -> spec_pb2.ModelSpec:
    """The message after serialization and parsing, as a server receives it."""
    return spec_pb2.ModelSpec.FromString(message.SerializeToString())


def wire_value(value: spec_pb2.Value) -> spec_pb2.Value:
    """The value after serialization and parsing."""
    return spec_pb2.Value.FromString(value.SerializeToString())


KIND_OF = {bool: "bool_value", int: "int_value", float: "float_value", str: "string_value", list: "int_list"}
"""The ``Value`` kind each Python type of the registry examples travels as."""


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("type_name", sorted(LAYER_MODELS))
def test_every_kind_round_trips(type_name: str) -> None:
    text = json.dumps(example_spec(type_name))
    spec = parse_spec(text)
    message = spec_to_proto(spec)
    received = wire(message)
    back = spec_from_proto(received)

    assert received == message
    assert back == spec
    assert back.canonical_json() == spec.canonical_json()
    assert back.to_json() == spec.to_json()
    assert json.loads(back.to_json()) == json.loads(spec.to_json())
    assert spec_to_bytes(back) == spec_to_bytes(spec)


@pytest.mark.parametrize("type_name", sorted(LAYER_MODELS))
def test_every_parameter_is_spelled_out_in_its_own_kind(type_name: str) -> None:
    spec = parse_spec(example_spec(type_name))
    layer, sent = spec.layers[0], spec_to_proto(spec).layers[0]

    assert (sent.type, sent.name) == (type_name, "first")
    assert set(sent.params) == {key for key, value in layer.params().items() if value is not None}
    for key, value in KINDS[type_name].example.items():
        assert sent.params[key].WhichOneof("kind") == KIND_OF[type(value)], key
    if type_name in LAYERS:
        assert sent.activation.type == "step" and sent.activation.name == "gate"
        assert sent.activation.params["threshold"].float_value == 0.5
        assert sent.activation.params["surrogate"].string_value == "ste"
    else:
        assert not sent.HasField("activation")


@pytest.mark.parametrize(
    ("input_shape", "layer", "key", "kind"),
    [
        ([2, 6, 6], {"type": "conv2d", "out_channels": 4, "kernel_size": [3, 1], "padding": [1, 0], "stride": [2, 1]}, "kernel_size", "int_list"),
        ([2, 6, 6], {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": "valid", "dilation": [1, 2]}, "padding", "string_value"),
        ([12], {"type": "unflatten", "dim": 1, "unflattened_size": [3, -1]}, "unflattened_size", "int_list"),
        ([12], {"type": "unflatten", "dim": -1, "unflattened_size": [2, 2, 3]}, "dim", "int_value"),
        ([3, 6], {"type": "layer_norm", "normalized_shape": [3, 6]}, "normalized_shape", "int_list"),
        ([2, 6, 6], {"type": "adaptive_avg_pool2d", "output_size": 2}, "output_size", "int_value"),
        ([4], {"type": "leaky_relu", "negative_slope": 1}, "negative_slope", "float_value"),
        ([4], {"type": "linear", "out_features": 2, "in_features": 4}, "in_features", "int_value"),
        ([4], {"type": "softmax", "dim": -1}, "dim", "int_value"),
        ([4], {"type": "gelu", "approximate": "tanh"}, "approximate", "string_value"),
    ],
)
def test_values_keep_their_kind(input_shape: list[int], layer: dict[str, Any], key: str, kind: str) -> None:
    spec = parse_spec({"input_shape": input_shape, "layers": [layer]})
    message = spec_to_proto(spec)
    back = spec_from_proto(wire(message))

    assert message.layers[0].params[key].WhichOneof("kind") == kind
    assert repr(getattr(back.layers[0], key)) == repr(getattr(spec.layers[0], key))
    assert back.canonical_json() == spec.canonical_json()


def test_a_whole_number_real_stays_real() -> None:
    spec = parse_spec({"input_shape": [4], "layers": [{"type": "hardtanh", "min_val": -3, "max_val": 3.0}]})
    back = spec_from_proto(wire(spec_to_proto(spec)))

    assert repr((back.layers[0].min_val, back.layers[0].max_val)) == "(-3.0, 3.0)"
    assert '"min_val":-3.0' in back.canonical_json()


def test_none_valued_parameters_are_left_out_and_come_back() -> None:
    absent = parse_spec({"input_shape": [2, 6, 6], "layers": [{"type": "max_pool2d", "kernel_size": 2}]})
    null = parse_spec({"input_shape": [2, 6, 6], "layers": [{"type": "max_pool2d", "kernel_size": 2, "stride": None}]})
    message = spec_to_proto(null)

    assert "stride" not in message.layers[0].params
    assert message == spec_to_proto(absent)
    back = spec_from_proto(wire(message))
    assert back.layers[0].stride is None
    assert back == null == absent
    assert back.to_json() == null.to_json()

    message.layers[0].params["stride"].null_value = struct_pb2.NULL_VALUE  # JSON null, spelled out
    assert spec_from_proto(wire(message)) == null

    given = parse_spec({"input_shape": [2, 6, 6], "layers": [{"type": "max_pool2d", "kernel_size": 2, "stride": [1, 2]}]})
    assert spec_from_proto(wire(spec_to_proto(given))).layers[0].stride == [1, 2]


def test_none_where_the_default_is_not_none_is_sent_as_null() -> None:
    # No registry parameter is like this today; the encoding must still not turn None into the default.
    linear = LAYER_MODELS["linear"].model_construct(type="linear", name=None, out_features=3, in_features=None, bias=None, activation=None)
    spec = ModelSpec.model_construct(name="model", input_shape=[4], layers=[linear])
    message = spec_to_proto(spec)

    assert message.layers[0].params["bias"].WhichOneof("kind") == "null_value"
    assert "in_features" not in message.layers[0].params
    with pytest.raises(SpecError) as caught:
        spec_from_proto(message)
    assert caught.value.errors() == [{"path": "layers[0].bias", "message": "must be true or false, got NoneType None", "type": "bool_type"}]


def test_names_and_aliases() -> None:
    spec = parse_spec({"input_shape": [4], "layers": [{"type": "linear", "out_features": 2}]})
    message = spec_to_proto(spec)
    assert message.HasField("name") and message.name == "model"
    assert not message.layers[0].HasField("name")

    message.ClearField("name")
    message.layers[0].type = "Linear"
    message.layers[0].activation.type = "Swish"
    back = spec_from_proto(wire(message))
    assert back.name == "model"
    assert (back.layers[0].type, back.layers[0].activation.type) == ("linear", "silu")
    assert [node.name for node in back.nodes] == ["linear_0", "silu_1"]


def test_max_params_is_passed_on() -> None:
    message = spec_to_proto(parse_spec({"input_shape": [100], "layers": [{"type": "linear", "out_features": 100}]}))

    with pytest.raises(SpecError) as caught:
        spec_from_proto(message, max_params=1000)
    assert caught.value.errors() == [
        {"path": "layers", "message": "the model has 10,100 parameters, over the limit of 1,000 (max_params)", "type": "too_many_parameters"}
    ]
    assert spec_from_proto(message, max_params=None).num_params == 10_100
    assert spec_from_bytes(message.SerializeToString(), max_params=10_100).num_params == 10_100


# ---------------------------------------------------------------- values


def test_nan_travels_and_is_refused_as_in_json() -> None:
    assert math.isnan(decode_value(wire_value(encode_value(math.nan))))
    raw = {"input_shape": [4], "layers": [{"type": "leaky_relu", "negative_slope": math.nan}]}
    with pytest.raises(SpecError) as caught:
        spec_from_proto(wire(raw_message(raw)))
    assert caught.value.errors() == [{"path": "layers[0].negative_slope", "message": "must be a finite number, got nan", "type": "finite_number"}]


# ---------------------------------------------------------------- errors


BAD_SPECS = {
    "out of range, the path of the README": {
        "input_shape": [4],
        "layers": [{"type": "linear", "out_features": 4}, {"type": "relu"}, {"type": "leaky_relu", "negative_slope": -1.0}],
    },
    "string where an int goes": {"input_shape": [4], "layers": [{"type": "linear", "out_features": "ten"}]},
    "float where an int goes": {"input_shape": [4], "layers": [{"type": "linear", "out_features": 3.0}]},
    "int where a bool goes": {"input_shape": [4], "layers": [{"type": "linear", "out_features": 3, "bias": 1}]},
    "string where a float goes": {"input_shape": [4], "layers": [{"type": "elu", "alpha": "big"}]},
    "list of three for a pair": {"input_shape": [2, 6, 6], "layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": [1, 2, 3]}]},
    "list where an int goes": {"input_shape": [4], "layers": [{"type": "softmax", "dim": [1]}]},
    "null where a value is required": {"input_shape": [4], "layers": [{"type": "linear", "out_features": None}]},
    "too large": {"input_shape": [4], "layers": [{"type": "linear", "out_features": 2**40}]},
    "bad literal": {"input_shape": [4], "layers": [{"type": "gelu", "approximate": "fast"}]},
    "unknown type": {"input_shape": [4], "layers": [{"type": "lineer", "out_features": 3}]},
    "unknown field": {"input_shape": [4], "layers": [{"type": "linear", "out_feature": 3}]},
    "activation of an activation": {"input_shape": [4], "layers": [{"type": "relu", "activation": "relu"}]},
    "unknown shorthand activation": {"input_shape": [4], "layers": [{"type": "linear", "out_features": 3, "activation": "linear"}]},
    "shorthand activation with a bad parameter": {
        "input_shape": [4], "layers": [{"type": "linear", "out_features": 3, "activation": {"type": "elu", "alpha": -1.0}}],
    },
    "empty spec": {"input_shape": [], "layers": []},
    "does not fit the input": {"input_shape": [4], "layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": 3}]},
    "bad names": {"name": "", "input_shape": [4], "layers": [{"type": "relu", "name": "for"}, {"type": "relu", "name": "x y"}]},
    "duplicate names": {"input_shape": [4], "layers": [{"type": "relu", "name": "a"}, {"type": "tanh", "name": "a"}]},
    "many problems at once": {
        "name": "bad name", "input_shape": [0],
        "layers": [{"type": "linear", "out_features": 0, "bias": "yes"}, {"type": "leaky_relu", "negative_slope": "x"}],
    },
}


@pytest.mark.parametrize("raw", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_a_bad_message_fails_as_the_same_json(raw: dict[str, Any]) -> None:
    with pytest.raises(SpecError) as from_json:
        parse_spec(json.dumps(raw))
    with pytest.raises(SpecError) as from_proto:
        spec_from_proto(wire(raw_message(raw)))
    with pytest.raises(SpecError) as from_bytes:
        spec_from_bytes(raw_message(raw).SerializeToString())

    assert from_proto.value.errors() == from_json.value.errors()
    assert from_bytes.value.errors() == from_json.value.errors()


def test_the_path_of_a_bad_parameter() -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_proto(wire(raw_message(BAD_SPECS["out of range, the path of the README"])))
    assert str(caught.value) == "layers[2].negative_slope: must be >= 0, got -1"

    with pytest.raises(SpecError) as caught:
        spec_from_proto(wire(raw_message(BAD_SPECS["string where an int goes"])))
    assert caught.value.errors() == [{"path": "layers[0].out_features", "message": "must be an integer, got str 'ten'", "type": "int_type"}]


def test_an_empty_value_is_reported_at_its_path_with_every_other_problem() -> None:
    message = raw_message({"input_shape": [4], "layers": [{"type": "linear", "out_features": 3}, {"type": "elu", "alpha": "big"}]})
    message.layers[0].params["bias"].SetInParent()
    message.layers[0].params["out_feature"].SetInParent()
    message.layers[1].activation.type = "relu"

    with pytest.raises(SpecError) as caught:
        spec_from_proto(wire(message))
    empty = "is an empty Value: set one of its kinds (int_value, float_value, string_value, ...)"
    assert caught.value.errors() == [
        {"path": "layers[0].bias", "message": empty, "type": EMPTY_VALUE},
        {"path": "layers[0].out_feature", "message": empty, "type": EMPTY_VALUE},
        {"path": "layers[0].out_feature", "message": "unknown field 'out_feature'; did you mean 'out_features'?", "type": "extra_forbidden"},
        {"path": "layers[1].alpha", "message": "must be a number, got str 'big'", "type": "float_type"},
        {"path": "layers[1].activation", "message": "unknown field 'activation'", "type": "extra_forbidden"},
    ]


def test_an_empty_value_inside_a_list() -> None:
    message = raw_message({"input_shape": [2, 6, 6], "layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": [3, 3]}]})
    message.layers[0].params["kernel_size"].list_value.values.add(int_value=3)
    message.layers[0].params["kernel_size"].list_value.values.add()

    with pytest.raises(SpecError) as caught:
        spec_from_proto(wire(message))
    assert [(p.path, p.type) for p in caught.value.problems] == [("layers[0].kernel_size[1]", EMPTY_VALUE), ("layers[0].kernel_size", "int_or_pair")]


@pytest.mark.parametrize("key", ["type", "name", "activation"])
def test_layer_fields_are_not_parameters(key: str) -> None:
    message = raw_message({"input_shape": [4], "layers": [{"type": "relu"}]})
    message.layers[0].params[key].string_value = "relu"

    with pytest.raises(SpecError) as caught:
        spec_from_proto(wire(message))
    assert caught.value.errors() == [
        {"path": f"layers[0].{key}", "message": f"is a field of Layer, not a parameter: set Layer.{key}, not params['{key}']", "type": RESERVED_KEY}
    ]


def test_a_layer_without_a_type() -> None:
    message = raw_message({"input_shape": [4], "layers": [{"type": "linear", "out_features": 3}]})
    message.layers.add()
    message.layers[0].activation.SetInParent()

    with pytest.raises(SpecError) as caught:
        spec_from_proto(wire(message))
    assert caught.value.errors() == [
        {"path": "layers[0].activation.type", "message": "is required: an activation such as 'relu' or 'tanh'", "type": "missing"},
        {"path": "layers[1].type", "message": "is required: a layer type such as 'linear' or 'relu'", "type": "missing"},
    ]


def test_bytes_that_are_not_a_message() -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_bytes(b"\xff\xff\xff")
    assert [(p.path, p.type) for p in caught.value.problems] == [("", "proto_decode")]
    assert str(caught.value).startswith("not a serialized specbuilder.v1.ModelSpec: ")


# ---------------------------------------------------------------- generated code


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    fresh = protogen.generate(tmp_path)
    expected = [protogen.OUT / path.relative_to(tmp_path) for path in fresh]

    assert ROOT / "clients/python/specbuilder_wire/v1/spec_pb2.py" in expected
    assert protogen.committed() == expected, "generated files without a .proto, or missing ones: run `make proto`"
    for new, old in zip(fresh, expected):
        assert new.read_bytes() == old.read_bytes(), f"{old.relative_to(ROOT)} is stale: run `make proto`"
    assert all((path.parent / "__init__.py").is_file() for path in expected)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = protogen.generate(tmp_path / "a")
    second = protogen.generate(tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


TENSOR_PROTO = """syntax = "proto3";
package demo.v1;
// A tensor.
message Tensor {
  // Its shape.
  repeated int64 shape = 1;
}
"""
SERVICE_PROTO = """syntax = "proto3";
package demo.v1;
import "google/protobuf/empty.proto";
import "specbuilder/v1/spec.proto";
import "demo/v1/tensor.proto";
// A request.
message RunRequest {
  // The spec.
  specbuilder.v1.ModelSpec spec = 1;
  // The input.
  Tensor input = 2;
}
// The service.
service Demo {
  // Runs a spec.
  rpc Run(RunRequest) returns (Tensor);
  // Does nothing.
  rpc Ping(google.protobuf.Empty) returns (google.protobuf.Empty);
}
"""


def test_files_that_import_each_other_and_declare_services(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    (protos / "specbuilder/v1").mkdir(parents=True)
    shutil.copy(protogen.PROTOS / "specbuilder/v1/spec.proto", protos / "specbuilder/v1/spec.proto")
    (protos / "demo/v1").mkdir(parents=True)
    (protos / "demo/v1/tensor.proto").write_text(TENSOR_PROTO)
    (protos / "demo/v1/service.proto").write_text(SERVICE_PROTO)
    out = tmp_path / "out"

    written = protogen.generate(out, protos)

    assert [path.relative_to(out).as_posix() for path in written] == [
        "demo/v1/service_pb2.py", "demo/v1/service_pb2.pyi", "demo/v1/service_pb2_grpc.py",
        "demo/v1/tensor_pb2.py", "demo/v1/tensor_pb2.pyi",
        "specbuilder_wire/v1/spec_pb2.py", "specbuilder_wire/v1/spec_pb2.pyi",
    ]
    assert "\nfrom specbuilder_wire.v1 import spec_pb2 as " in (out / "demo/v1/service_pb2.py").read_text()
    check = (
        "from demo.v1 import service_pb2, service_pb2_grpc, tensor_pb2\n"
        "from specbuilder_wire.v1 import spec_pb2\n"
        "request = service_pb2.RunRequest(spec=spec_pb2.ModelSpec(input_shape=[3]), input=tensor_pb2.Tensor(shape=[1, 3]))\n"
        "assert service_pb2.RunRequest.FromString(request.SerializeToString()) == request\n"
        "methods = service_pb2.DESCRIPTOR.services_by_name['Demo'].methods_by_name\n"
        "assert methods['Run'].output_type.full_name == 'demo.v1.Tensor'\n"
        "assert callable(service_pb2_grpc.DemoStub) and callable(service_pb2_grpc.add_DemoServicer_to_server)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(out), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


def test_protoc_errors_are_raised_and_write_nothing(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    (protos / "demo").mkdir(parents=True)
    (protos / "demo/good.proto").write_text('syntax = "proto3";\npackage demo;\nmessage Good {}\n')
    (protos / "demo/bad.proto").write_text('syntax = "proto3";\npackage demo;\nmessage Bad { nope x = 1; }\n')

    with pytest.raises(RuntimeError, match=r"protoc failed with exit status 1:\n.*demo/bad.proto.*nope"):
        protogen.generate(tmp_path / "out", protos)
    assert not (tmp_path / "out").exists()


def _undocumented(file: FileDescriptorProto) -> list[str]:
    """Messages, fields, enums, values, services and methods of ``file`` without a comment."""
    documented = {
        tuple(location.path)
        for location in file.source_code_info.location
        if location.leading_comments.strip() or location.trailing_comments.strip()
    }
    missing = []

    def message(proto: DescriptorProto, path: tuple[int, ...], name: str) -> None:
        if proto.options.map_entry:
            return
        missing.extend([name] if path not in documented else [])
        missing.extend(f"{name}.{f.name}" for i, f in enumerate(proto.field) if (*path, 2, i) not in documented)
        for i, nested in enumerate(proto.nested_type):
            message(nested, (*path, 3, i), f"{name}.{nested.name}")

    for i, proto in enumerate(file.message_type):
        message(proto, (4, i), proto.name)
    for i, enum in enumerate(file.enum_type):
        missing.extend([enum.name] if (5, i) not in documented else [])
        missing.extend(f"{enum.name}.{v.name}" for j, v in enumerate(enum.value) if (5, i, 2, j) not in documented)
    for i, service in enumerate(file.service):
        missing.extend([service.name] if (6, i) not in documented else [])
        missing.extend(f"{service.name}.{m.name}" for j, m in enumerate(service.method) if (6, i, 2, j) not in documented)
    return missing


@pytest.mark.parametrize("source", protogen.sources())
def test_every_message_and_field_is_documented(source: str) -> None:
    files = {file.name: file for file in protogen.descriptor_set().file}
    assert _undocumented(files[source]) == []


def test_the_documentation_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo/x.proto").write_text('syntax = "proto3";\npackage demo;\n// Yes.\nmessage A {\n  int32 b = 1;\n}\nmessage C {}\n')
    [file] = protogen.descriptor_set(tmp_path).file
    assert _undocumented(file) == ["A.b", "C"]


# ---------------------------------------------------------------- no torch


@pytest.mark.parametrize("module", ["specbuilder_wire.v1", "specbuilder_wire.v1.spec_pb2", "specbuilder.proto"])
def test_importing_imports_no_torch(module: str) -> None:
    code = (
        "import importlib, sys\n"
        "def torch_modules(): return sorted(name for name in sys.modules if name.split('.')[0] == 'torch')\n"
        f"importlib.import_module({module!r})\n"
        "print(torch_modules())\n"
        "from specbuilder.proto import spec_from_bytes, spec_to_bytes\n"
        "from specbuilder.spec import parse_spec\n"
        "spec = parse_spec({'input_shape': [2, 6, 6], 'layers': [{'type': 'conv2d', 'out_channels': 2, 'kernel_size': 3}]})\n"
        "assert spec_from_bytes(spec_to_bytes(spec)) == spec\n"
        "print(torch_modules())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout.split()) == (0, ["[]", "[]"]), done.stderr
