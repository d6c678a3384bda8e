"""How the client names a model on the wire: a spec (``SpecSource``) or a stored model's id.

The server is the authority on specs, so nothing is validated here: a ``ModelSpec`` travels as
a message, JSON text and dicts travel as JSON text, and the server's answer names every problem
at its path (``layers[2].negative_slope``) whichever form was sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Union

from specbuilder.proto import spec_to_proto
from specbuilder.spec import ModelSpec
from specbuilder_wire.v1 import service_pb2

SpecLike = Union[ModelSpec, Mapping[str, Any], str]
"""A spec as the client takes it: a ``ModelSpec``, a JSON-like dict, or JSON text."""
ModelRef = SpecLike
"""A spec, or a stored model's id (text that does not start with ``{``)."""


def spec_source(spec: SpecLike) -> service_pb2.SpecSource:
    """The spec as a ``SpecSource``; a TypeError for anything else."""
    if isinstance(spec, ModelSpec):
        return service_pb2.SpecSource(spec=spec_to_proto(spec))
    if isinstance(spec, str):
        return service_pb2.SpecSource(json=spec)
    if isinstance(spec, Mapping):
        try:
            text = json.dumps(spec)
        except TypeError as error:
            raise TypeError(f"the spec dict must hold JSON values only (numbers, strings, lists, dicts): {error}") from None
        return service_pb2.SpecSource(json=text)
    raise TypeError(f"a spec must be a ModelSpec, a dict or JSON text, got {type(spec).__name__}")


def model_fields(model: ModelRef) -> dict[str, Any]:
    """The ``model`` oneof of Evaluate and StreamEvaluate requests: ``{"model_id": ...}`` or ``{"spec": ...}``."""
    if isinstance(model, str) and not model.lstrip().startswith("{"):
        return {"model_id": model}
    return {"spec": spec_source(model)}


__all__ = ["ModelRef", "SpecLike", "model_fields", "spec_source"]
