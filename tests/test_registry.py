"""Every registry, layer kinds and training choices alike, on the one base (``specbuilder.registry``).

Each entry of each registry has one strict model tagged by its name, documented by its summary,
whose ``params()`` are exactly the entry's parameters; every torch object an entry names resolves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import ValidationError

from specbuilder.activations import ACTIVATIONS
from specbuilder.kinds import LayerKind
from specbuilder.layers import LAYERS
from specbuilder.registry import Entry, EntrySpec, resolve
from specbuilder.spec import ACTIVATION_MODELS, LAYER_MODELS
from specbuilder.training.config import LOSS_MODELS, OPTIMIZER_MODELS, SCHEDULE_MODELS
from specbuilder.training.losses import LOSSES
from specbuilder.training.optimizers import OPTIMIZERS
from specbuilder.training.schedules import SCHEDULES

REGISTRIES: dict[str, tuple[Mapping[str, Entry], Mapping[str, type[EntrySpec]]]] = {
    "layers": (LAYERS, LAYER_MODELS),
    "activations": (ACTIVATIONS, ACTIVATION_MODELS),
    "optimizers": (OPTIMIZERS, OPTIMIZER_MODELS),
    "losses": (LOSSES, LOSS_MODELS),
    "schedules": (SCHEDULES, SCHEDULE_MODELS),
}
ENTRIES = [(models[name], entry) for entries, models in REGISTRIES.values() for name, entry in entries.items()]
IDS = [f"{family}:{name}" for family, (entries, _) in REGISTRIES.items() for name in entries]

DOTTED_PATHS = ("module", "functional", "cls", "function")
"""The fields in which an entry names a torch object (``PASS_THROUGH``, the empty string, names none)."""


def example(entry: Entry) -> dict[str, Any]:
    """Values for the entry's parameters that have no default (a layer's ``example``; choices need none)."""
    return dict(getattr(entry, "example", {}))


@pytest.mark.parametrize(("model", "entry"), ENTRIES, ids=IDS)
def test_every_entry_has_one_strict_model_tagged_by_its_name(model: type[EntrySpec], entry: Entry) -> None:
    assert model.entry is entry
    assert model.model_json_schema()["description"] == entry.summary
    given = example(entry)
    value = model.model_validate({"type": entry.name, **given})
    assert value.type == entry.name
    assert value.params() == {key: getattr(value, key) for key in entry.params}
    left_out = {key: v for key, v in value.params().items() if key not in given}
    assert left_out == {key: v for key, v in model.defaults().items() if key not in given}
    with pytest.raises(ValidationError, match="extra_forbidden"):
        model.model_validate({"type": entry.name, **given, "no_such_parameter": 1})
    with pytest.raises(ValidationError, match="literal_error"):
        model.model_validate({"type": "no_such_entry", **given})


NAMING = [(entry, path) for _, entry in ENTRIES for field in DOTTED_PATHS if (path := getattr(entry, field, None))]


@pytest.mark.parametrize(("entry", "path"), NAMING, ids=[f"{entry.name}:{path}" for entry, path in NAMING])
def test_every_torch_object_an_entry_names_resolves(entry: Entry, path: str) -> None:
    assert callable(resolve(path))


KINDS = [(LAYER_MODELS[name], kind) for name, kind in {**LAYERS, **ACTIVATIONS}.items()]


@pytest.mark.parametrize(("model", "kind"), KINDS, ids=[kind.name for _, kind in KINDS])
def test_a_kind_declares_exactly_the_parameters_its_shape_inference_fills_in(model: type[EntrySpec], kind: LayerKind) -> None:
    """``LayerKind.inferred`` (what ListLayers reports as inferred) is what ``infer`` does with a parameter left None."""
    layer = model.model_validate({"type": kind.name, **kind.example})
    filled = {key for key, value in layer.params().items()
              if value is None and kind.infer(layer.params(), kind.sample_shape).kwargs.get(key) is not None}
    assert set(kind.inferred) == filled
    assert all(model.defaults()[key] is None for key in kind.inferred)
