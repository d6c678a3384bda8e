"""Registries of named choices (losses, optimizers, schedules) as config fields.

A ``Choice`` is a registry ``Entry`` (``specbuilder.registry``) with a cross-parameter rule.
``choice_models`` makes one model per entry and ``choice_field`` a config field that accepts a
name (``"adam"``) or an object (``{"type": "sgd", "momentum": 0.9}``), exactly like a layer's
``activation`` shorthand in the spec language. The registry is the only list of names:
validation, docs and tests all read it. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from specbuilder.registry import Entry, EntrySpec, entry_model, one_of, shorthand_validator

Check = Callable[[Mapping[str, Any]], list[tuple[str, str]]]
"""Cross-parameter rule: ``params -> [(field, message), ...]``, empty when all is well."""


def no_check(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The rule of a choice whose parameters are independent."""
    return []


@dataclass(frozen=True)
class Choice(Entry):
    """One named choice of a registry, with its parameters and the rule they keep together."""

    check: Check = no_check


def choice_models(registry: Mapping[str, Choice], suffix: str) -> dict[str, type[EntrySpec]]:
    """One model per entry, named ``<Name><suffix>`` (``SgdOptimizer``); ``type`` defaults to the entry's name."""
    return {
        name: entry_model(choice, EntrySpec, "".join(part.title() for part in name.split("_")) + suffix, module=__name__, type_required=False)
        for name, choice in registry.items()
    }


def choice_field(models: Mapping[str, type[EntrySpec]]) -> Any:
    """The annotation of a field taking a name or an object of any of ``models``."""
    return Annotated[one_of(models), shorthand_validator(models)]
