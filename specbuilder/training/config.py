"""``TrainConfig``: how to train, validated all at once with every problem at its path.

``optimizer``, ``loss`` and ``lr_schedule`` take a registry name or an object with the
entry's parameters (``{"type": "sgd", "momentum": 0.9, "nesterov": true}``), like a layer's
``activation``. Errors read like the spec's: ``optimizer.momentum: must be < 1, got 1.5``.
Nothing here imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from specbuilder.errors import Loc, SpecError, friendly, reraise, suggest
from specbuilder.spec import Style
from specbuilder.registry import JSON_SCHEMA_DIALECT, EntrySpec, Strict
from specbuilder.training.choices import Choice, choice_field, choice_models
from specbuilder.training.losses import LOSSES
from specbuilder.training.optimizers import OPTIMIZERS
from specbuilder.training.schedules import SCHEDULES
from specbuilder_wire.results import Problem

OPTIMIZER_MODELS = choice_models(OPTIMIZERS, "Optimizer")
LOSS_MODELS = choice_models(LOSSES, "Loss")
SCHEDULE_MODELS = choice_models(SCHEDULES, "Schedule")
CHOICES: dict[str, tuple[str, Mapping[str, Choice], Mapping[str, type[EntrySpec]]]] = {
    "optimizer": ("optimizer", OPTIMIZERS, OPTIMIZER_MODELS),
    "loss": ("loss", LOSSES, LOSS_MODELS),
    "lr_schedule": ("schedule", SCHEDULES, SCHEDULE_MODELS),
}
"""Config field -> (what it is called in messages, registry, models)."""

MAX_EPOCHS = 1_000_000
MAX_BATCH = 2**31 - 1
MAX_WORLD_SIZE = 4096
"""Most ranks a distributed run may have: far beyond one machine, short of a typo's worth of processes."""


def _check_device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise PydanticCustomError("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value}", {"value": repr(value)})
    return value


Device = Annotated[str, AfterValidator(_check_device)]


def _choices(registry: Mapping[str, Choice]) -> str:
    return f"a name ({', '.join(registry)}) or an object with its 'type' and parameters"


class ConfigError(SpecError):
    """A training configuration is invalid; ``problems`` lists each one with its path."""


class TrainConfig(Strict):
    """How to train a model: every field has a default, so ``TrainConfig()`` is a working config."""

    model_config = ConfigDict(json_schema_extra={"$schema": JSON_SCHEMA_DIALECT})
    epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS, description="passes over the training set")] = 20
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH, description="samples per optimizer step (per rank when world_size > 1)")] = 64
    lr: Annotated[float, Field(gt=0, description="learning rate (the schedule's starting rate)")] = 0.01
    optimizer: Annotated[choice_field(OPTIMIZER_MODELS), Field(description=_choices(OPTIMIZERS))] = OPTIMIZER_MODELS["adam"]()
    loss: Annotated[choice_field(LOSS_MODELS) | None, Field(description=_choices(LOSSES) + "; null picks one from the targets and the model's last layer")] = None
    lr_schedule: Annotated[choice_field(SCHEDULE_MODELS), Field(description=_choices(SCHEDULES) + "; the rate changes once per epoch")] = SCHEDULE_MODELS["constant"]()
    seed: Annotated[int, Field(ge=0, le=2**63 - 1, description="initialization, split, shuffling, dropout, built-in data")] = 0
    validation_split: Annotated[float, Field(ge=0, lt=1, description="fraction of samples held out for validation")] = 0.2
    grad_clip: Annotated[float | None, Field(gt=0, description="clip the gradient norm to this; None: no clipping")] = None
    stats_every: Annotated[int, Field(ge=0, description="activation statistics every this many steps; 0: off")] = 0
    device: Annotated[Device, Field(description="'auto', 'cpu', 'cuda' or 'cuda:N'")] = "auto"
    style: Annotated[Style, Field(description="how a spec is compiled")] = "sequential"
    max_seconds: Annotated[float | None, Field(gt=0, description="stop (status cancelled) after this long")] = None
    amp: Annotated[Literal["bf16", "fp16"] | None, Field(description=(
        "mixed precision: forward and loss under autocast in bfloat16 or float16 (fp16 with a gradient scaler); "
        "None: full precision"))] = None
    world_size: Annotated[int, Field(ge=1, le=MAX_WORLD_SIZE, description=(
        "processes training together (DistributedDataParallel; gloo on CPU, NCCL on CUDA), each on its shard of "
        "every epoch; batch_size is per rank"))] = 1

    @model_validator(mode="wrap")
    @classmethod
    def _validate_all(cls, data: Any, handler: Any) -> TrainConfig:
        try:
            config = handler(data)
        except ValidationError as error:
            raise _rewrite(error) from None
        problems = [
            ((name, field), "invalid_combination", message, getattr(value, field))
            for name in CHOICES
            if (value := getattr(config, name)) is not None
            for field, message in CHOICES[name][1][value.type].check(value.params())
        ]
        if problems:
            raise reraise(cls.__name__, problems)
        return config

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (from 0) under ``lr_schedule``."""
        schedule = self.lr_schedule
        return SCHEDULES[schedule.type].lr_at(epoch, self.epochs, self.lr, **schedule.params())


def _rewrite_one(detail: ErrorDetails) -> tuple[Loc, str, str, Any]:
    loc = list(detail["loc"])
    tag = None
    if len(loc) >= 2 and loc[0] in CHOICES and loc[1] in CHOICES[str(loc[0])][1]:
        tag = str(loc.pop(1))
    kind = detail["type"]
    if len(loc) == 1 and loc[0] in CHOICES:
        what, registry, _ = CHOICES[str(loc[0])]
        if kind == "union_tag_not_found":
            return (loc[0], "type"), "missing", f"is required: the {what}'s name, such as '{next(iter(registry))}'", None
        if kind == "union_tag_invalid":
            got = detail["ctx"]["tag"]
            hint = suggest(got, registry) or f"; choose from {', '.join(registry)}"
            return (loc[0],), "unknown_choice", f"unknown {what} '{got}'{hint}", got
        if kind == "model_attributes_type":
            value = detail.get("input")
            return (loc[0],), kind, f"must be a name such as '{next(iter(registry))}' or an object with a 'type', got {type(value).__name__} {value!r}", value
    fields_at: dict[Loc, tuple[str, ...]] = {(): tuple(TrainConfig.model_fields)}
    if tag is not None:
        fields_at[(loc[0],)] = tuple(CHOICES[str(loc[0])][2][tag].model_fields)
    kind, message = friendly({**detail, "loc": tuple(loc)}, fields_at)
    return tuple(loc), kind, message, detail.get("input")


def _rewrite(error: ValidationError) -> ValidationError:
    """Pydantic's errors with discriminator tags dropped from paths and messages for people."""
    return reraise("TrainConfig", [_rewrite_one(detail) for detail in error.errors()])


def parse_config(source: TrainConfig | Mapping[str, Any] | str | bytes | Path | None = None) -> TrainConfig:
    """A validated ``TrainConfig`` from a config, a dict, JSON text or a JSON file; None gives the defaults.

    Raises ``ConfigError`` listing every problem, each with its path.
    """
    try:
        if source is None:
            return TrainConfig()
        if isinstance(source, TrainConfig):
            return source
        if isinstance(source, Path):
            source = source.read_bytes()
        if isinstance(source, (str, bytes)):
            return TrainConfig.model_validate_json(source)
        return TrainConfig.model_validate(source)
    except ValidationError as error:
        raise ConfigError.from_validation(error) from None


def problem_at(path: str, message: str) -> ConfigError:
    """A ``ConfigError`` for one problem found when the config meets the model or the data."""
    return ConfigError([Problem(path, message, "incompatible")])


__all__ = [
    "CHOICES", "LOSS_MODELS", "OPTIMIZER_MODELS", "SCHEDULE_MODELS", "ConfigError", "TrainConfig",
    "parse_config", "problem_at",
]
