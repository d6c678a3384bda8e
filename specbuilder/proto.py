"""``ModelSpec`` to and from its protobuf form, ``specbuilder.v1.ModelSpec`` (``protos/specbuilder/v1/spec.proto``).

The encoding is generic: a layer is its type, optional name, a map of parameters and an optional
activation, so the registries drive it and a new kind needs no edit here. Conversion is lossless
for every valid spec: ints stay ints, reals stay reals (doubles), and a parameter that is None
is left out (or sent as an explicit null where its default is not None).

Decoding only turns the message into the dict a JSON spec would give and hands it to
``parse_spec``: the pydantic model stays the one validator, so a bad message fails with the same
``SpecError`` and the same paths (``layers[2].negative_slope``) as bad JSON. What only a message
can get wrong, a ``Value`` with no kind set, is reported at its path alongside the rest.

Importing this module never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from specbuilder.errors import Loc, Problem, SpecError, format_path
from specbuilder.spec import DEFAULT_MAX_PARAMS, MAX_PROBLEMS, LayerSpec, ModelSpec, check_size, parse_spec
from specbuilder_wire.v1 import spec_pb2

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_LIST_KINDS = ("int_list", "float_list", "bool_list", "string_list", "list_value")


# ---------------------------------------------------------------- ModelSpec -> message


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(value: int, path: str) -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{path}: {value} does not fit in a 64-bit integer")
    return value


def encode_value(value: Any, path: str = "value") -> spec_pb2.Value:
    """One parameter value as a ``Value``; ``path`` names it in errors."""
    if value is None:
        return spec_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, bool):
        return spec_pb2.Value(bool_value=value)
    if _is_int(value):
        return spec_pb2.Value(int_value=_check_int(value, path))
    if isinstance(value, float):
        return spec_pb2.Value(float_value=value)
    if isinstance(value, str):
        return spec_pb2.Value(string_value=value)
    if isinstance(value, (list, tuple)):
        items = list(value)
        if all(_is_int(v) for v in items):  # the empty list too
            return spec_pb2.Value(int_list=spec_pb2.IntList(values=[_check_int(v, f"{path}[{i}]") for i, v in enumerate(items)]))
        if all(isinstance(v, float) for v in items):
            return spec_pb2.Value(float_list=spec_pb2.FloatList(values=items))
        if all(isinstance(v, bool) for v in items):
            return spec_pb2.Value(bool_list=spec_pb2.BoolList(values=items))
        if all(isinstance(v, str) for v in items):
            return spec_pb2.Value(string_list=spec_pb2.StringList(values=items))
        return spec_pb2.Value(list_value=spec_pb2.ValueList(values=[encode_value(v, f"{path}[{i}]") for i, v in enumerate(items)]))
    raise TypeError(f"{path}: cannot encode {type(value).__name__} {value!r} as a specbuilder.v1.Value")


def _encode_layer(layer: LayerSpec, path: str) -> spec_pb2.Layer:
    message = spec_pb2.Layer(type=layer.type)
    if layer.name is not None:
        message.name = layer.name
    fields = type(layer).model_fields
    for key, value in layer.params().items():
        if value is None and fields[key].default is None:
            continue  # None-valued optional parameter: left out, the default says the same
        message.params[key].CopyFrom(encode_value(value, f"{path}.{key}"))
    activation = getattr(layer, "activation", None)
    if activation is not None:
        message.activation.CopyFrom(_encode_layer(activation, f"{path}.activation"))
    return message


def spec_to_proto(spec: ModelSpec) -> spec_pb2.ModelSpec:
    """The spec as a ``specbuilder.v1.ModelSpec`` message; ``spec_from_proto`` gives it back.

    Every parameter is spelled out, defaults included (as in ``canonical_json``), so the receiver
    builds exactly this model whatever its own defaults; None-valued ones are left out.
    """
    return spec_pb2.ModelSpec(
        name=spec.name,
        input_shape=spec.input_shape,
        layers=[_encode_layer(layer, f"layers[{i}]") for i, layer in enumerate(spec.layers)],
    )


# ---------------------------------------------------------------- message -> ModelSpec


class _Unset:
    """Stands in for a ``Value`` with no kind, so validation still reports its other problems."""

    def __repr__(self) -> str:
        return "<unset Value>"


_UNSET = _Unset()
EMPTY_VALUE = "empty_value"
"""Problem type of a ``Value`` with no kind set."""
RESERVED_KEY = "reserved_key"
"""Problem type of a ``Layer.params`` key that is a field of ``Layer`` ("type", "name", "activation")."""

_Found = list[tuple[Loc, str, str]]


def _decode_value(value: spec_pb2.Value, loc: Loc, problems: _Found) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None:
        problems.append((loc, EMPTY_VALUE, "is an empty Value: set one of its kinds (int_value, float_value, string_value, ...)"))
        return _UNSET
    if kind == "null_value":
        return None
    if kind == "list_value":
        return [_decode_value(item, (*loc, i), problems) for i, item in enumerate(value.list_value.values)]
    if kind in _LIST_KINDS:
        return list(getattr(value, kind).values)
    return getattr(value, kind)


def decode_value(value: spec_pb2.Value) -> Any:
    """The Python value of one ``Value``: int, float, bool, str, None or a list; ``SpecError`` if a kind is unset."""
    problems: _Found = []
    decoded = _decode_value(value, ("value",), problems)
    if problems:
        raise SpecError(_reported(problems))
    return decoded


def _reported(found: _Found) -> list[Problem]:
    """The first ``MAX_PROBLEMS`` problems, after one that counts them all when there are more
    (a message of a million empty Values: its first problems say enough)."""
    problems = [Problem(format_path(loc), message, kind) for loc, kind, message in found[:MAX_PROBLEMS]]
    if len(found) > MAX_PROBLEMS:
        problems.insert(0, Problem("", f"{len(found):,} problems; the first {MAX_PROBLEMS} follow, fix them first", "too_many_problems"))
    return problems


def _decode_layer(message: spec_pb2.Layer, loc: Loc, problems: _Found) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    if message.type:
        layer["type"] = message.type
    if message.HasField("name"):
        layer["name"] = message.name
    for key in sorted(message.params):
        if key in ("type", "name", "activation"):
            problems.append(((*loc, key), RESERVED_KEY, f"is a field of Layer, not a parameter: set Layer.{key}, not params['{key}']"))
            continue
        layer[key] = _decode_value(message.params[key], (*loc, key), problems)
    if message.HasField("activation"):
        layer["activation"] = _decode_layer(message.activation, (*loc, "activation"), problems)
    return layer


def proto_to_dict(message: spec_pb2.ModelSpec) -> tuple[dict[str, Any], list[Problem]]:
    """The dict a JSON spec would give, and the problems only a message can have (empty ``Value``s, reserved keys)."""
    found: _Found = []
    data: dict[str, Any] = {
        "input_shape": list(message.input_shape),
        "layers": [_decode_layer(layer, ("layers", i), found) for i, layer in enumerate(message.layers)],
    }
    if message.HasField("name"):
        data["name"] = message.name
    return data, _reported(found)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def _layer_index(problem: Problem) -> int:
    """Where a problem belongs in a report: by layer, spec-level problems first."""
    found = re.match(r"layers\[(\d+)\]", problem.path)
    return int(found.group(1)) if found else -1


def spec_from_proto(message: spec_pb2.ModelSpec, *, max_params: int | None = DEFAULT_MAX_PARAMS) -> ModelSpec:
    """A validated ``ModelSpec`` from a message; raises ``SpecError`` listing every problem with its path."""
    check_size(message.ByteSize(), "bytes")
    data, own = proto_to_dict(message)
    try:
        spec = parse_spec(data, max_params=max_params)
    except SpecError as error:
        if not own:
            raise
        # An empty Value's own problem replaces what validation said of its stand-in, except
        # "unknown field", which is news.
        empty = [mine.path for mine in own if mine.type == EMPTY_VALUE]
        rest = [p for p in error.problems if p.type == "extra_forbidden" or not any(_under(p.path, path) for path in empty)]
        raise SpecError(sorted([*own, *rest], key=_layer_index)) from None
    if own:  # a reserved key, or a stand-in for an empty Value that validation let through
        raise SpecError(own)
    return spec


def spec_from_bytes(data: bytes, *, max_params: int | None = DEFAULT_MAX_PARAMS) -> ModelSpec:
    """``spec_from_proto`` of a serialized ``specbuilder.v1.ModelSpec``; bytes that do not parse are a ``SpecError`` too."""
    try:
        message = spec_pb2.ModelSpec.FromString(data)
    except DecodeError as error:
        raise SpecError([Problem("", f"not a serialized specbuilder.v1.ModelSpec: {error}", "proto_decode")]) from None
    return spec_from_proto(message, max_params=max_params)


def spec_to_bytes(spec: ModelSpec) -> bytes:
    """The spec serialized as a ``specbuilder.v1.ModelSpec``, deterministically (map entries sorted)."""
    return spec_to_proto(spec).SerializeToString(deterministic=True)


__all__ = ["EMPTY_VALUE", "RESERVED_KEY", "decode_value", "encode_value", "proto_to_dict", "spec_from_bytes", "spec_from_proto", "spec_to_bytes", "spec_to_proto"]


def config_to_proto(config: Mapping[str, Any]) -> dict[str, spec_pb2.Value]:
    """A training config as the wire's flat ``map<string, Value>``.

    The wire has no nested maps, so a choice with parameters travels as dotted keys:
    ``optimizer={"type": "sgd", "momentum": 0.9}`` becomes ``optimizer.type`` and ``optimizer.momentum``.
    """
    flat: dict[str, spec_pb2.Value] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            for inner, item in value.items():
                flat[f"{key}.{inner}"] = encode_value(item, f"config.{key}.{inner}")
        else:
            flat[key] = encode_value(value, f"config.{key}")
    return flat
