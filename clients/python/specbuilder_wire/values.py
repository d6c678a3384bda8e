"""Python values to and from ``Value`` messages (``protos/specbuilder/v1/spec.proto``): one
parameter, a spec message as the dict its JSON would give, a training configuration's flat map.

A ``Value`` holds an int, a float (a double), a bool, a string, null, or a list, so every JSON
value but an object travels as it is: ints stay ints, reals stay reals. Lists of one kind travel
packed (``int_list``), others item by item (``list_value``).

The wire has no nested maps, so a training configuration travels flat: a choice with parameters
becomes dotted keys, ``optimizer={"type": "sgd", "momentum": 0.9}`` is ``optimizer.type`` and
``optimizer.momentum`` (``config_to_proto``), and ``config_from_proto`` nests them again, so a
stored run's configuration can be sent back as it is. Reading it, a choice may also be named by
its bare key (``optimizer: "sgd"`` beside ``optimizer.momentum``).

What only a message can get wrong — a ``Value`` with no kind set, a spec layer's parameter named
like a field of ``Layer`` — is a ``Problem`` at its path (``layers[2].alpha``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2

from specbuilder_wire.results import Problem
from specbuilder_wire.v1 import spec_pb2

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EMPTY_VALUE = "empty_value"
"""Problem type of a ``Value`` with no kind set."""
RESERVED_KEY = "reserved_key"
"""Problem type of a ``Layer.params`` key that is a field of ``Layer`` ("type", "name", "activation")."""
CONFIG_KEY = "config_key"
"""Problem type of a flat configuration's key that does not nest: ``a.b.c``, ``a.``, or ``a.b`` beside a non-choice ``a``."""

_LIST_KINDS = ("int_list", "float_list", "bool_list", "string_list", "list_value")
_LAYER_FIELDS = ("type", "name", "activation")


class UnreadableValue(ValueError):
    """Values that do not read as Python values; ``problems`` says where and why (at least one)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


class _Unset:
    """Stands in for a ``Value`` with no kind, so a validator still reports its other problems."""

    def __repr__(self) -> str:
        return "<unset Value>"


_UNSET = _Unset()


# ---------------------------------------------------------------- Python -> Value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(value: int, path: str) -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{path}: {value} does not fit in a 64-bit integer")
    return value


def encode_value(value: Any, path: str = "value") -> spec_pb2.Value:
    """One value as a ``Value``: None, bool, int (64-bit), float, str, or a list or tuple of them.

    A ValueError for an int out of range, a TypeError for anything else; ``path`` names it in both.
    """
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


def config_to_proto(config: Mapping[str, Any], path: str = "config") -> dict[str, spec_pb2.Value]:
    """A training configuration as the wire's flat ``map<string, Value>``: a choice given as a
    dict becomes dotted keys (``optimizer.type``, ``optimizer.momentum``)."""
    flat: dict[str, spec_pb2.Value] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            for inner, item in value.items():
                flat[f"{key}.{inner}"] = encode_value(item, f"{path}.{key}.{inner}")
        else:
            flat[key] = encode_value(value, f"{path}.{key}")
    return flat


# ---------------------------------------------------------------- Value -> Python


def _read(value: spec_pb2.Value, path: str, problems: list[Problem]) -> Any:
    """The Python value; an empty ``Value`` is a problem at ``path`` and reads as a stand-in."""
    kind = value.WhichOneof("kind")
    if kind is None:
        problems.append(Problem(path, "is an empty Value: set one of its kinds (int_value, float_value, string_value, ...)", EMPTY_VALUE))
        return _UNSET
    if kind == "null_value":
        return None
    if kind == "list_value":
        return [_read(item, f"{path}[{i}]", problems) for i, item in enumerate(value.list_value.values)]
    if kind in _LIST_KINDS:
        return list(getattr(value, kind).values)
    return getattr(value, kind)


def decode_value(value: spec_pb2.Value, path: str = "value") -> Any:
    """The Python value of one ``Value``: int, float, bool, str, None or a list; ``UnreadableValue``
    naming the path of every ``Value`` in it with no kind set."""
    problems: list[Problem] = []
    decoded = _read(value, path, problems)
    if problems:
        raise UnreadableValue(problems)
    return decoded


def _layer_dict(message: spec_pb2.Layer, path: str, problems: list[Problem]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    if message.type:
        layer["type"] = message.type
    if message.HasField("name"):
        layer["name"] = message.name
    for key in sorted(message.params):
        if key in _LAYER_FIELDS:
            problems.append(Problem(f"{path}.{key}", f"is a field of Layer, not a parameter: set Layer.{key}, not params['{key}']", RESERVED_KEY))
            continue
        layer[key] = _read(message.params[key], f"{path}.{key}", problems)
    if message.HasField("activation"):
        layer["activation"] = _layer_dict(message.activation, f"{path}.activation", problems)
    return layer


def spec_to_dict(message: spec_pb2.ModelSpec) -> tuple[dict[str, Any], list[Problem]]:
    """The dict the spec written as JSON would give, unvalidated, and every problem only a message
    can have (empty ``Value``s, which read as stand-ins a validator refuses, and reserved keys)."""
    problems: list[Problem] = []
    data: dict[str, Any] = {
        "input_shape": list(message.input_shape),
        "layers": [_layer_dict(layer, f"layers[{i}]", problems) for i, layer in enumerate(message.layers)],
    }
    if message.HasField("name"):
        data["name"] = message.name
    return data, problems


def config_from_proto(flat: Mapping[str, spec_pb2.Value], path: str = "config") -> dict[str, Any]:
    """A flat configuration as Python values, dotted keys nested again (``optimizer.momentum`` ->
    ``optimizer["momentum"]``; a bare ``optimizer: "sgd"`` beside it becomes its ``type``).

    ``UnreadableValue`` for empty ``Value``s (all of them) or a key that does not nest (the first).
    """
    problems: list[Problem] = []
    values = {key: _read(flat[key], f"{path}.{key}", problems) for key in sorted(flat)}
    if problems:
        raise UnreadableValue(problems)
    nested: dict[str, Any] = {}
    for key in sorted(values, key=lambda k: k.count(".")):
        head, dot, rest = key.partition(".")
        if not dot:
            nested[key] = values[key]
            continue
        if not rest or "." in rest:
            raise UnreadableValue([Problem(f"{path}.{key}", "must be a setting (lr) or one parameter of a choice (optimizer.momentum)", CONFIG_KEY)])
        parent = nested.get(head)
        if isinstance(parent, str):
            parent = nested[head] = {"type": parent}
        elif parent is None:
            parent = nested[head] = {}
        elif not isinstance(parent, dict):
            raise UnreadableValue([Problem(
                f"{path}.{head}", f"is a single value, so {path}.{key} cannot be set too; give the choice's name as {head} or {head}.type",
                CONFIG_KEY,
            )])
        parent[rest] = values[key]
    return nested


__all__ = [
    "CONFIG_KEY", "EMPTY_VALUE", "RESERVED_KEY", "UnreadableValue", "config_from_proto", "config_to_proto", "decode_value",
    "encode_value", "spec_to_dict",
]
