"""Training configurations as the wire's flat ``map<string, Value>`` and back.

The wire has no nested maps, so a choice with parameters travels as dotted keys:
``optimizer={"type": "sgd", "momentum": 0.9}`` becomes ``optimizer.type`` and
``optimizer.momentum``. Records come back the same way and are nested again here, so a stored
run's ``config`` can be passed to ``train(**config)`` as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from specbuilder.proto import decode_value, encode_value
from specbuilder.v1 import spec_pb2


def config_map(config: Mapping[str, Any]) -> dict[str, spec_pb2.Value]:
    """TrainConfig settings as ``TrainRequest.config``; a dict value becomes one dotted key per parameter."""
    flat: dict[str, spec_pb2.Value] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            for inner, item in value.items():
                flat[f"{key}.{inner}"] = encode_value(item, f"config.{key}.{inner}")
        else:
            flat[key] = encode_value(value, f"config.{key}")
    return flat


def config_dict(config: Mapping[str, spec_pb2.Value]) -> dict[str, Any]:
    """A record's flat config as Python values, dotted keys nested again (``optimizer.type`` -> ``optimizer["type"]``)."""
    nested: dict[str, Any] = {}
    for key in sorted(config):
        head, dot, rest = key.partition(".")
        value = decode_value(config[key])
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            nested[key] = value
    return nested


__all__ = ["config_dict", "config_map"]
