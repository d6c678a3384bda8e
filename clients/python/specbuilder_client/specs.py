"""How the client names a model on the wire: a spec (``SpecSource``) or a stored model's id.

The server is the authority on specs, so nothing is validated here: every spec travels as JSON
text (``SpecSource.json``), and the server's answer names every problem at its path
(``layers[2].negative_slope``) whichever form it was given in. The client needs no part of
specbuilder's core for it: a ``ModelSpec`` is read as any object with pydantic's
``model_dump(mode="json")``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable

from specbuilder_wire.v1 import service_pb2


@runtime_checkable
class SpecModel(Protocol):
    """A spec object, such as ``specbuilder.ModelSpec``: its JSON form is ``model_dump(mode="json")``."""

    def model_dump(self, *, mode: str) -> dict[str, Any]: ...


SpecLike = Union[SpecModel, Mapping[str, Any], str, PathLike[str]]
"""A spec as the client takes it: a ``ModelSpec`` (or any pydantic model of one), a JSON-like dict, JSON text, or the path of a JSON file."""
ModelRef = SpecLike
"""A spec, or a stored model's id (text that does not start with ``{``)."""


def spec_json(spec: SpecLike) -> str:
    """The spec as JSON text; a TypeError for anything else, an OSError for a file that cannot be read."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, PathLike):
        return Path(spec).read_text()
    if isinstance(spec, Mapping):  # before the protocol, whose runtime check costs more than the JSON of a small spec
        data: Any = spec
    elif isinstance(spec, SpecModel):
        data = spec.model_dump(mode="json")
    else:
        raise TypeError(f"a spec must be a ModelSpec, a dict, JSON text or a path, got {type(spec).__name__}")
    try:
        return json.dumps(data)
    except TypeError as error:
        raise TypeError(f"the spec dict must hold JSON values only (numbers, strings, lists, dicts): {error}") from None


def spec_source(spec: SpecLike) -> service_pb2.SpecSource:
    """The spec as a ``SpecSource`` holding its JSON text (see ``spec_json``)."""
    return service_pb2.SpecSource(json=spec_json(spec))


def model_fields(model: ModelRef) -> dict[str, Any]:
    """The ``model`` oneof of Evaluate and StreamEvaluate requests: ``{"model_id": ...}`` or ``{"spec": ...}``."""
    if isinstance(model, str) and not model.lstrip().startswith("{"):
        return {"model_id": model}
    return {"spec": spec_source(model)}


__all__ = ["ModelRef", "SpecLike", "SpecModel", "model_fields", "spec_json", "spec_source"]
