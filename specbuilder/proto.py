"""``ModelSpec`` to and from its protobuf form, ``specbuilder.v1.ModelSpec`` (``protos/specbuilder/v1/spec.proto``).

The encoding is generic: a layer is its type, optional name, a map of parameters and an optional
activation, so the registries drive it and a new kind needs no edit here. Conversion is lossless
for every valid spec: ints stay ints, reals stay reals (doubles), and a parameter that is None
is left out (or sent as an explicit null where its default is not None). Parameter values go
through the wire package's codec (``specbuilder_wire.values``).

Decoding only turns the message into the dict a JSON spec would give
(``specbuilder_wire.values.spec_to_dict``) and hands it to ``parse_spec``: the pydantic model
stays the one validator, so a bad message fails with the same ``SpecError`` and the same paths
(``layers[2].negative_slope``) as bad JSON. What only a message can get wrong, a ``Value`` with
no kind set or a reserved parameter name, is reported at its path alongside the rest.

Importing this module never imports torch.
"""

from __future__ import annotations

import re

from google.protobuf.message import DecodeError

from specbuilder.errors import SpecError
from specbuilder.spec import DEFAULT_MAX_PARAMS, MAX_PROBLEMS, LayerSpec, ModelSpec, check_size, parse_spec
from specbuilder_wire.results import Problem
from specbuilder_wire.v1 import spec_pb2
from specbuilder_wire.values import EMPTY_VALUE, encode_value, spec_to_dict


# ---------------------------------------------------------------- ModelSpec -> message


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


def _reported(found: list[Problem]) -> list[Problem]:
    """The first ``MAX_PROBLEMS`` problems, after one that counts them all when there are more
    (a message of a million empty Values: its first problems say enough)."""
    problems = found[:MAX_PROBLEMS]
    if len(found) > MAX_PROBLEMS:
        problems.insert(0, Problem("", f"{len(found):,} problems; the first {MAX_PROBLEMS} follow, fix them first", "too_many_problems"))
    return problems


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def _layer_index(problem: Problem) -> int:
    """Where a problem belongs in a report: by layer, spec-level problems first."""
    found = re.match(r"layers\[(\d+)\]", problem.path)
    return int(found.group(1)) if found else -1


def spec_from_proto(message: spec_pb2.ModelSpec, *, max_params: int | None = DEFAULT_MAX_PARAMS) -> ModelSpec:
    """A validated ``ModelSpec`` from a message; raises ``SpecError`` listing every problem with its path."""
    check_size(message.ByteSize(), "bytes")
    data, found = spec_to_dict(message)
    own = _reported(found)
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


__all__ = ["spec_from_bytes", "spec_from_proto", "spec_to_bytes", "spec_to_proto"]

