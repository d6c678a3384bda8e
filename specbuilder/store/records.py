"""What the model store keeps about a model or a training run, and the rules its inputs obey.

``ModelRecord`` is the public view of one entry; ``ModelSummary`` the part of it a listing
carries (``Page``), without the spec, config, history and statistics. Ids are generated here
and checked against one pattern before any path is built from them, so no id a client sends
can name a file outside the store. Names, statuses and the JSON payloads (config, history, stats, dataset)
are checked before anything is written, so a bad argument never leaves half an entry.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict

from specbuilder.spec import ModelSpec

Status = Literal["running", "completed", "failed", "cancelled", "diverged", "interrupted"]
STATUSES: tuple[str, ...] = get_args(Status)
FINAL_STATUSES: tuple[str, ...] = tuple(s for s in STATUSES if s != "running")
"""A run ends in one of these; a model saved in one go has one of these too."""

ID_PATTERN = re.compile(r"[0-9a-f]{32}")
"""A model id: ``uuid4().hex``, 32 lowercase hex digits, nothing else."""
ID_FORM = "32 lowercase hexadecimal digits"
"""``ID_PATTERN`` for people."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A model name: the same rule as a spec's name, at most 64 characters."""


class StoreError(Exception):
    """The store could not do what was asked (an I/O failure, a closed store, a wrong state)."""


class StoreUnavailable(StoreError):
    """A server the store lives on cannot be reached: the PostgreSQL index or the weights bucket; the message says which.

    Nothing was committed by the call that raised it; the same call may succeed once the server is
    back (the store reconnects by itself). A service answers it as UNAVAILABLE.
    """


class ModelNotFound(StoreError, KeyError):
    """No model or run with this id is in the store."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


class NoWeights(StoreError):
    """The entry exists but has no weights: a run still going, or one that ended without them."""


class QuotaExceeded(StoreError):
    """Storing would take the store past its ``max_models`` or ``max_bytes``; the message names which.

    Raised before anything is written: a save or a run's start leaves no entry. A run whose
    weights do not fit is recorded ``failed`` (the message as its reason), without weights.
    """


class BadCursor(ValueError):
    """A page cursor that no ``ModelStore.page`` returned."""


def new_id() -> str:
    """A fresh model id."""
    return uuid.uuid4().hex


def shown(value: object) -> str:
    """``repr(value)``, cut to 80 characters: a bad argument as an error message quotes it."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_id(value: object) -> str:
    """``value`` if it is a well-formed model id, else ``ValueError``; never touches the filesystem."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise ValueError(f"a model id is {ID_FORM}, as returned by save or start_run; got {shown(value)}")
    return value


def check_name(value: object) -> str:
    """``value`` if it is an acceptable model name, else ``ValueError``."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            "a model name is 1 to 64 characters: letters, digits, '_', '.', '-', starting with a letter "
            f"or digit; got {shown(value)}"
        )
    return value


def check_status(value: object, allowed: tuple[str, ...] = STATUSES) -> str:
    """``value`` if it is one of ``allowed``, else ``ValueError`` listing them."""
    if value not in allowed:
        raise ValueError(f"status must be one of {', '.join(allowed)}; got {shown(value)}")
    return str(value)


def _plain(value: Any) -> Any:
    """``json.dumps`` hook: pydantic models (such as training statistics) and numpy values as JSON data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON data")


def as_json_data(value: Any, what: str) -> Any:
    """``value`` as plain JSON data (dicts, lists, str, numbers, None), or ``ValueError`` naming ``what``.

    Pydantic models and numpy values are converted; NaN and infinities are kept (a diverged
    run's loss is NaN and should read as NaN).
    """
    try:
        return json.loads(json.dumps(value, default=_plain))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be JSON data (dicts, lists, strings, numbers): {error}") from None


def as_dict(value: Any, what: str) -> dict[str, Any]:
    """``value`` (a mapping or a pydantic model) as a JSON dict, or ``ValueError``."""
    data = as_json_data(value, what)
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a dict; got {type(value).__name__}")
    return data


def as_dict_list(value: Any, what: str) -> list[dict[str, Any]]:
    """``value`` (a sequence of mappings or pydantic models) as a JSON list of dicts, or ``ValueError``."""
    data = as_json_data(value, what)
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(f"{what} must be a list of dicts; got {shown(value)}")
    return data


def as_dataset(value: Any) -> str | dict[str, Any] | None:
    """A dataset description: a name, a dict, or None."""
    data = as_json_data(value, "dataset")
    if data is not None and not isinstance(data, (str, dict)):
        raise ValueError(f"dataset must be a name, a dict or None; got {shown(value)}")
    return data


class ModelSummary(BaseModel):
    """What a listing says of one entry: everything small, read without the spec or the training record.

    ``has_weights`` says whether ``load``/``export`` will work; ``weights_bytes`` is the size of
    the weights file (0 without one), what the entry counts against the store's ``max_bytes``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    status: Status
    num_params: int
    spec_hash: str
    created: datetime
    updated: datetime
    dataset: str | dict[str, Any] | None
    reason: str | None
    has_weights: bool
    weights_bytes: int


class ModelRecord(ModelSummary):
    """One entry of the store in full: a trained model, or a training run and what it produced.

    ``history`` holds one dict per epoch and ``stats`` the final per-layer statistics, as the
    training engine reported them.
    """

    spec: ModelSpec
    config: dict[str, Any]
    history: list[dict[str, Any]]
    stats: list[dict[str, Any]]


class Page(BaseModel):
    """One page of a listing, newest first; ``next`` is the cursor of the page after it (None on the last)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    records: list[ModelSummary]
    next: str | None
