"""The JSON Schemas of the spec (``specbuilder schema``, GetSchema) and of the training config accept
what the validators accept in its documented forms (a layer's ``activation`` and a config's choices
by name alone, or as objects) and refuse what they refuse. One difference is JSON Schema's own: its
"integer" is any number with no fraction, 8.0 included, which the validators refuse for an int."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from specbuilder.registry import JSON_SCHEMA_DIALECT
from specbuilder.spec import KINDS, ModelSpec, parse_spec
from specbuilder.training.config import CHOICES, TrainConfig, parse_config

ROOT = Path(__file__).resolve().parent.parent
SPEC = jsonschema.Draft202012Validator(ModelSpec.model_json_schema())
CONFIG = jsonschema.Draft202012Validator(TrainConfig.model_json_schema())


def readme_spec() -> dict[str, Any]:
    found = re.search(r"```json\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert found, "README.md shows no spec"
    return json.loads(found.group(1))


def problems(validator: jsonschema.Draft202012Validator, instance: Any) -> list[str]:
    return [error.message for error in validator.iter_errors(instance)]


@pytest.mark.parametrize("model", [ModelSpec, TrainConfig])
def test_the_schemas_are_valid_draft_2020_12(model: type[Any]) -> None:
    schema = model.model_json_schema()
    assert schema["$schema"] == JSON_SCHEMA_DIALECT
    jsonschema.Draft202012Validator.check_schema(schema)


SPECS = {path.name: json.loads(path.read_text()) for path in sorted((ROOT / "examples").glob("*.json"))}
SPECS["README.md"] = readme_spec()
SPECS.update({f"kind:{name}": {"input_shape": list(kind.sample_shape), "layers": [{"type": name, **kind.example}]} for name, kind in KINDS.items()})


@pytest.mark.parametrize("name", SPECS)
def test_every_example_spec_and_every_kind_validates_against_the_spec_schema(name: str) -> None:
    spec = SPECS[name]
    parse_spec(spec)
    assert problems(SPEC, spec) == []
    assert problems(SPEC, json.loads(parse_spec(spec).canonical_json())) == []  # every field spelled out, too


@pytest.mark.parametrize("layer", [
    {"type": "linear", "out_features": 0},
    {"type": "linear", "out_features": 8, "out_feature": 8},
    {"type": "linear", "out_features": 8, "activation": "relu7"},
    {"type": "leaky_relu", "negative_slope": "0.1"},
    {"type": "no_such_layer"},
])
def test_the_spec_schema_refuses_what_the_validator_refuses(layer: dict[str, Any]) -> None:
    spec = {"input_shape": [4], "layers": [layer]}
    with pytest.raises(Exception):
        parse_spec(spec)
    assert problems(SPEC, spec)


CONFIGS: list[dict[str, Any]] = [
    {},
    json.loads(TrainConfig().model_dump_json()),
    {"optimizer": "sgd", "loss": "mse", "lr_schedule": "cosine", "epochs": 3, "lr": 1},
    {"optimizer": {"type": "sgd", "momentum": 0.9}, "loss": None, "grad_clip": 1.5, "amp": "bf16"},
    *({field: name} for field in CHOICES for name in CHOICES[field][1]),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda config: json.dumps(config)[:60])
def test_configs_the_validator_accepts_validate_against_the_config_schema(config: dict[str, Any]) -> None:
    parse_config(config)
    assert problems(CONFIG, config) == []


@pytest.mark.parametrize("config", [{"epochs": 2.5}, {"optimizer": "sgdx"}, {"optimizer": {"type": "sgd", "momentum": "high"}},
                                    {"lr": 0}, {"no_such_key": 1}, {"style": "graph"}])
def test_the_config_schema_refuses_what_the_validator_refuses(config: dict[str, Any]) -> None:
    with pytest.raises(Exception):
        parse_config(config)
    assert problems(CONFIG, config)
