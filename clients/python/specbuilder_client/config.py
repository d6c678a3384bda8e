"""Training configurations from the wire's flat ``map<string, Value>`` (``specbuilder.proto.config_to_proto`` writes them).

The wire has no nested maps, so a choice with parameters travels as dotted keys:
``optimizer={"type": "sgd", "momentum": 0.9}`` becomes ``optimizer.type`` and
``optimizer.momentum``. Records come back the same way and are nested again here, so a stored
run's ``config`` can be passed to ``train(**config)`` as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from specbuilder.proto import decode_value
from specbuilder_wire.v1 import spec_pb2


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


__all__ = ["config_dict"]
