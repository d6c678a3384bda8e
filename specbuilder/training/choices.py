"""Registries of named choices (losses, optimizers, schedules) as pydantic fields.

A ``Choice`` is one registry entry: a name, a summary and its parameters (pydantic field
definitions, torch's names). ``choice_field`` turns a registry into a config field that
accepts a name (``"adam"``) or an object (``{"type": "sgd", "momentum": 0.9}``), exactly like
a layer's ``activation`` shorthand in the spec language. The registry is the only list of
names: validation, docs and tests all read it. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

Check = Callable[[Mapping[str, Any]], list[tuple[str, str]]]
"""Cross-parameter rule: ``params -> [(field, message), ...]``, empty when all is well."""


def no_check(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The rule of a choice whose parameters are independent."""
    return []


@dataclass(frozen=True)
class Choice:
    """One named entry of a registry, with its parameters."""

    name: str
    summary: str
    params: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    """Pydantic field definitions ``name -> (annotation, default or FieldInfo)``."""
    check: Check = no_check


class Strict(BaseModel):
    """Base of every training model: strict types, no unknown fields, finite numbers, frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class ChoiceSpec(Strict):
    """A validated choice: its ``type`` (the registry name) and its parameters."""

    type: str

    def params(self) -> dict[str, Any]:
        """The parameters by name, without ``type``."""
        return {key: getattr(self, key) for key in type(self).model_fields if key != "type"}


def _shorthand(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


def choice_models(registry: Mapping[str, Choice], suffix: str) -> dict[str, type[ChoiceSpec]]:
    """One pydantic model per entry, named ``<Name><suffix>`` (``SgdOptimizer``)."""
    models: dict[str, type[ChoiceSpec]] = {}
    for name, choice in registry.items():
        class_name = "".join(part.title() for part in name.split("_")) + suffix
        model = create_model(class_name, __base__=ChoiceSpec, __doc__=choice.summary, type=(Literal[name], name), **choice.params)
        model.__module__ = __name__
        models[name] = model
    return models


def choice_field(models: Mapping[str, type[ChoiceSpec]]) -> Any:
    """The annotation of a field taking a name or an object of any of ``models``."""
    union = Annotated[Union[tuple(models.values())], Field(discriminator="type")]  # noqa: UP007
    return Annotated[union, BeforeValidator(_shorthand)]
