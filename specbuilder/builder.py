"""``SpecBuilder``: write a spec in Python, one chained call per layer.

    SpecBuilder(input_shape=[10], name="tutorial").linear(5, name="fc1").relu().linear(1).sigmoid().build()

gives the same ``ModelSpec`` as the JSON form. The layer methods are generated from the
registries (``specbuilder.spec.KINDS``): one per layer type and activation, with a real
signature (each kind's ``positional`` parameters first, the rest keyword-only) and a docstring
listing every parameter with its type, bounds and default, so ``help()`` and editors show them.
A new registry entry is a new method with no edit here.

Values are checked once, by ``build()``, through ``parse_spec``: errors carry the JSON paths
(``layers[1].negative_slope: must be >= 0, got -1``). Only a call Python itself cannot bind (an
unknown keyword, too many arguments) raises ``TypeError`` at the call. No torch import here.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Mapping, Sequence
from functools import reduce
from typing import Any, Literal

from specbuilder.errors import suggest
from specbuilder.kinds import ActivationKind, LayerKind
from specbuilder.layers import MAX_SIZE
from specbuilder.spec import DEFAULT_MAX_PARAMS, KINDS, LAYER_MODELS, ModelSpec, parse_spec

ActivationArg = str | dict[str, Any]
"""An activation as a layer's ``activation=`` takes it: a name, or a dict with ``type`` and parameters."""


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: the JSON form a spec is checked in (``kernel_size=(3, 1)``)."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


class SpecBuilder:
    """Builds a ``ModelSpec`` layer by layer; every layer method returns the builder itself.

    There is one method per layer type and activation (``linear``, ``conv2d``, ``relu``,
    ``leaky_relu``, ...), plus ``add(type, **params)`` for any type, alias or torch class name.
    The builder is mutable: each call appends to it.
    """

    def __init__(self, input_shape: Sequence[int], name: str | None = None) -> None:
        self._input_shape = _plain(input_shape)
        self._name = name
        self._layers: list[dict[str, Any]] = []

    def add(self, type: str, /, **params: Any) -> SpecBuilder:  # noqa: A002 - the spec's own word
        """Append a layer of ``type`` (name, alias or torch class name) with these parameters.

        ``name=`` and ``activation=`` are accepted as in JSON; unknown parameters and values are
        reported by ``build()`` with their path.
        """
        self._layers.append({"type": type, **{key: _plain(value) for key, value in params.items()}})
        return self

    def to_dict(self) -> dict[str, Any]:
        """The spec in its JSON form, unvalidated: what ``build()`` checks."""
        spec: dict[str, Any] = {"input_shape": self._input_shape, "layers": [dict(layer) for layer in self._layers]}
        if self._name is not None:
            spec["name"] = self._name
        return spec

    def build(self, max_params: int | None = DEFAULT_MAX_PARAMS) -> ModelSpec:
        """The validated ``ModelSpec``; raises ``SpecError`` listing every problem with its path."""
        return parse_spec(self.to_dict(), max_params=max_params)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        types = ", ".join(layer["type"] for layer in self._layers)
        return f"SpecBuilder(input_shape={self._input_shape!r}, name={self._name!r}, layers=[{types}])"


def _python_type(schema: Mapping[str, Any]) -> Any:
    """The Python type a JSON-schema fragment of a parameter accepts (for signatures)."""
    if "anyOf" in schema:
        return reduce(operator.or_, (_python_type(part) for part in schema["anyOf"]))
    if "enum" in schema:
        return Literal[tuple(schema["enum"])]
    if schema.get("type") == "array":
        return list[_python_type(schema.get("items", {}))]
    return {"integer": int, "number": float, "boolean": bool, "string": str, "null": type(None)}.get(schema.get("type"), Any)


def _describe(schema: Mapping[str, Any]) -> str:
    """A JSON-schema fragment in words: ``int >= 1 or list of 2 int >= 1``."""
    if "anyOf" in schema:
        return " or ".join(_describe(part) for part in schema["anyOf"])
    if "enum" in schema:
        return " or ".join(map(repr, schema["enum"]))
    kind = schema.get("type")
    if kind == "array":
        count = schema.get("minItems") if schema.get("minItems") == schema.get("maxItems") else None
        return f"list of {f'{count} ' if count else ''}{_describe(schema.get('items', {}))}"
    words = {"integer": "int", "number": "float", "boolean": "bool", "string": "str", "null": "None"}.get(kind, "any")
    bounds = [
        f"{op} {schema[key]}"
        for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
        if key in schema and schema[key] != MAX_SIZE
    ]
    return " ".join([words, ", ".join(bounds)]) if bounds else words


_NAME_DOC = "module name (a letter, then letters, digits, _); default: '<type>_<index>'"
_ACTIVATION_DOC = "an activation after this layer: a name ('relu') or a dict ({'type': 'leaky_relu', 'negative_slope': 0.2})"


def _signature_and_doc(kind: LayerKind, schemas: Mapping[str, Any]) -> tuple[inspect.Signature, str]:
    """The method's signature and docstring, read from the layer's pydantic model and its JSON schema."""
    model = LAYER_MODELS[kind.name]
    schema = schemas[model.__name__]["properties"]
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    lines = []
    for param in (*kind.positional, *(p for p in kind.params if p not in kind.positional)):
        field = model.model_fields[param]
        default = inspect.Parameter.empty if field.is_required() else field.default
        how = inspect.Parameter.POSITIONAL_OR_KEYWORD if param in kind.positional else inspect.Parameter.KEYWORD_ONLY
        parameters.append(inspect.Parameter(param, how, default=default, annotation=_python_type(schema[param])))
        lines.append(f"    {param}: {_describe(schema[param])}; " + ("required" if field.is_required() else f"default {field.default!r}"))
    parameters.append(inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None))
    lines.append(f"    name: {_NAME_DOC}")
    if not isinstance(kind, ActivationKind):
        parameters.append(inspect.Parameter("activation", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ActivationArg | None))
        lines.append(f"    activation: {_ACTIVATION_DOC}")
    head = [f"Append a '{kind.name}' layer ({kind.module}): {kind.summary}"]
    if isinstance(kind, ActivationKind):
        low, high = kind.range_for(model.defaults())
        head.append(f"\n    {kind.formula}, output range [{low:g}, {high:g}]" + (f"; flat where {kind.flat.text}" if kind.flat else ""))
    if kind.aliases:
        head.append(f"\nAlso known as: {', '.join(kind.aliases)}.")
    doc = "\n".join(head) + "\n\nArgs:\n" + "\n".join(lines) + "\n\nReturns the builder, for chaining; values are checked by build()."
    return inspect.Signature(parameters, return_annotation=SpecBuilder), doc


def _layer_method(kind: LayerKind, schemas: Mapping[str, Any]) -> Callable[..., SpecBuilder]:
    """``SpecBuilder.<kind.name>``: binds its arguments like a written method and calls ``add``."""
    signature, doc = _signature_and_doc(kind, schemas)

    def method(*args: Any, **kwargs: Any) -> SpecBuilder:
        unknown = [key for key in kwargs if key not in signature.parameters]
        if unknown:
            hint = suggest(unknown[0], signature.parameters) or f"; it takes {', '.join(list(signature.parameters)[1:])}"
            raise TypeError(f"SpecBuilder.{kind.name}(): unknown parameter {unknown[0]!r}{hint}")
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"SpecBuilder.{kind.name}(): {error}") from None
        params = dict(bound.arguments)
        return params.pop("self").add(kind.name, **params)

    method.__name__ = kind.name
    method.__qualname__ = f"SpecBuilder.{kind.name}"
    method.__doc__ = doc
    method.__signature__ = signature  # type: ignore[attr-defined]
    return method


def _install() -> None:
    """One method per registry kind; the spec's JSON schema (one generation) supplies the types."""
    schemas = ModelSpec.model_json_schema()["$defs"]
    for kind in KINDS.values():
        setattr(SpecBuilder, kind.name, _layer_method(kind, schemas))


_install()

__all__ = ["ActivationArg", "SpecBuilder"]
