"""Registries: named entries with parameters, and the strict pydantic models that validate them.

A registry is a ``dict`` of ``Entry`` records by name. Two families build on it: the layer kinds
and activations of the spec language (``specbuilder.kinds.LayerKind``) and the losses,
optimizers and schedules of a training config (``specbuilder.training.choices.Choice``). An
entry's ``params`` are pydantic field definitions under torch's names; ``entry_model`` makes the
strict model of one entry (an ``EntrySpec`` tagged by its ``type``), ``one_of`` the field that
takes any of a registry's models, so schema, validation, docs and tests read every registry the
same way. Entries name torch objects by dotted path (``resolve`` imports them on use): nothing
here imports torch.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
"""The JSON Schema draft pydantic writes, named by the ``$schema`` of the spec's and the training config's schemas."""
Params = Mapping[str, tuple[Any, Any]]
"""Pydantic field definitions ``name -> (annotation, default or FieldInfo)``."""


@dataclass(frozen=True)
class Entry:
    """One named entry of a registry, with its parameters."""

    name: str
    """The registry key, and the ``type`` a spec or config names the entry by."""
    summary: str
    """One sentence for people: the docstring of the entry's model, so its JSON schema description."""
    params: Params = field(default_factory=dict)
    """The entry's parameters, torch's names, in the order docs and signatures list them."""


class Strict(BaseModel):
    """Base of every spec and config model: strict types, no unknown fields, finite numbers, frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class EntrySpec(Strict):
    """A validated entry: its ``type`` (the registry name) and its parameters."""

    type: str
    entry: ClassVar[Entry]
    """The registry entry the model validates (set by ``entry_model``)."""

    def params(self) -> dict[str, Any]:
        """The entry's parameters by name: no ``type``, nor a field a base model adds (a layer's ``name``)."""
        return {key: getattr(self, key) for key in self.entry.params}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The parameters that have a default, with it: what the entry takes where a spec leaves them out."""
        fields = cls.model_fields
        return {key: fields[key].default for key in cls.entry.params if not fields[key].is_required()}


M = TypeVar("M", bound=EntrySpec)


def entry_model(entry: Entry, base: type[M], name: str, *, module: str, type_required: bool = True, **fields: Any) -> type[M]:
    """The model of ``entry``: a subclass of ``base`` named ``name`` in ``module`` (where its
    registry's models are made), with a ``type`` field taking only the entry's name (defaulting to
    it unless ``type_required``), the entry's parameters, then ``fields``; its docstring is the
    entry's summary."""
    tag = (Literal[entry.name], ... if type_required else entry.name)
    model = create_model(name, __base__=base, __module__=module, __doc__=entry.summary, type=tag, **entry.params, **fields)
    model.entry = entry
    return model


def one_of(models: Mapping[str, type[EntrySpec]]) -> Any:
    """The annotation of a field taking an object of any of ``models``, chosen by its ``type``."""
    return Annotated[Union[tuple(models.values())], Field(discriminator="type")]  # noqa: UP007


def shorthand(value: Any) -> Any:
    """A bare name as the object it stands for (``"adam"`` is ``{"type": "adam"}``); anything else as it is.
    Run before a ``one_of`` field's validation, it lets the field take a name alone."""
    return {"type": value} if isinstance(value, str) else value


def shorthand_validator(models: Mapping[str, type[EntrySpec]], normalize: Callable[[Any], Any] = shorthand, *,
                        nullable: bool = False) -> BeforeValidator:
    """The validator that runs ``normalize`` (``shorthand``, or one that also canonicalizes names) before a
    ``one_of(models)`` field validates; the field's JSON schema then says what it takes: a name of ``models``
    or an object of any of them (or null, when ``nullable``)."""
    accepted: Any = Literal[tuple(models)] | one_of(models)
    return BeforeValidator(normalize, json_schema_input_type=accepted | None if nullable else accepted)


@functools.cache
def resolve(path: str) -> Any:
    """Import the object a registry names by dotted path."""
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)
