"""Request fields to core objects, each checked with an error that names the field.

Specs go through ``specbuilder.proto`` / ``parse_spec`` (the core's one validator), training
configurations through ``parse_config``; this module only picks the oneof a client set, and
says which field is missing or wrong.

``TrainRequest.config`` and ``ModelRecord.config`` are flat maps, read and written by the one
rule of ``specbuilder_wire.values`` (``config_from_proto``, ``config_to_proto``), so a stored
run's config can be sent back as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from specbuilder.datasets import DATASETS, DataError, Dataset, from_arrays
from specbuilder.devices import AMP_DTYPES
from specbuilder.errors import SpecError, suggest
from specbuilder.proto import spec_from_proto
from specbuilder.spec import ModelSpec, parse_spec
from specbuilder.store.model_store import MAX_PAGE
from specbuilder.store.records import ID_FORM, check_id, check_name, shown
from specbuilder.training import ConfigError, TrainConfig, parse_config
from specbuilder_server.errors import invalid, spec_problems
from specbuilder_wire.arrays import copy_to_numpy
from specbuilder_wire.regions import RegionReader
from specbuilder_wire.results import status_name
from specbuilder_wire.v1 import service_pb2, spec_pb2
from specbuilder_wire.values import UnreadableValue, config_from_proto

DEFAULT_BINS = 64
MIN_BINS, MAX_BINS = 2, 4096
"""Histogram bins a client may ask for (the monitor's own minimum; a cap on the answer's size)."""
DEFAULT_PAGE = 100
"""ListModels' page size when the request leaves it 0."""
MAX_CONFIG_KEYS, MAX_CONFIG_BYTES = 64, 1 << 16
"""Bounds of a TrainRequest's config: well past any real one, far short of a hostile one's cost to explain."""


def parse_source(source: service_pb2.SpecSource, path: str, max_params: int) -> ModelSpec:
    """The validated spec a ``SpecSource`` holds; ``SpecError`` (the core's) if it is invalid."""
    kind = source.WhichOneof("source")
    if kind is None:
        raise invalid(path, "is required: set spec (a ModelSpec message) or json (the spec as JSON text)", "missing")
    if kind == "spec":
        return spec_from_proto(source.spec, max_params=max_params)
    return parse_spec(source.json, max_params=max_params)


def spec_of(source: service_pb2.SpecSource, path: str, max_params: int) -> ModelSpec:
    """``parse_source``, an invalid spec answered INVALID_ARGUMENT with the spec's own paths (``layers[2].type``)."""
    try:
        return parse_source(source, path, max_params)
    except SpecError as error:
        raise spec_problems(error) from None


def model_id(value: str, path: str = "model_id") -> str:
    """A well-formed model id (32 hex digits), checked before the store is asked."""
    if not value:
        raise invalid(path, "is required: the id of a stored model (ListModels shows them)", "missing")
    try:
        return check_id(value)
    except ValueError:
        raise invalid(path, f"must be {ID_FORM} (a ModelRecord.id), got {shown(value)}", "model_id") from None


@dataclass(frozen=True)
class Options:
    """How to evaluate: which modules to monitor (None: statistics off), bins, whether outputs go back, precision."""

    skip_output: bool
    layers: str | list[str] | None
    """``"activations"``, ``"all"`` or module names; None when statistics are off."""
    bins: int
    amp: str | None = None
    """``"bf16"`` or ``"fp16"``: the forward under autocast; None: full precision."""


def options_of(options: service_pb2.EvaluateOptions, spec: ModelSpec, path: str = "options") -> Options:
    """``EvaluateOptions`` checked against the spec: layer names must exist, bins be in range."""
    if options.amp and options.amp not in AMP_DTYPES:
        names = ", ".join(f"'{name}'" for name in AMP_DTYPES)
        raise invalid(f"{path}.amp", f"must be {names} or empty (full precision), got '{options.amp}'", "literal_error")
    if options.bins and not MIN_BINS <= options.bins <= MAX_BINS:
        raise invalid(f"{path}.bins", f"must be between {MIN_BINS} and {MAX_BINS}, or 0 for the default ({DEFAULT_BINS}); got {options.bins}", "range")
    names = [node.name for node in spec.nodes]
    if len(options.layers) > len(names):
        raise invalid(f"{path}.layers", f"names {len(options.layers):,} modules; the model has {len(names)}, so name each at most once", "too_many")
    known = set(names)
    for index, name in enumerate(options.layers):
        if name not in known:
            raise invalid(f"{path}.layers[{index}]", f"no module named '{name}'{suggest(name, names)}; the model's modules are {', '.join(names)}", "unknown_layer")
    layers: str | list[str] | None = None
    if options.statistics:
        layers = list(dict.fromkeys(options.layers)) if options.layers else ("all" if options.all_layers else "activations")
    return Options(skip_output=options.skip_output, layers=layers, bins=options.bins or DEFAULT_BINS, amp=options.amp or None)


def train_config(config: Mapping[str, spec_pb2.Value], device: torch.device) -> TrainConfig:
    """The validated ``TrainConfig`` of a request, trained on the server's ``device``.

    The operator's device wins: a config may name a device only if it is that one (``auto`` is).
    A config larger than any real one is refused before its settings are read one by one.
    """
    if len(config) > MAX_CONFIG_KEYS:
        raise invalid("config", f"has {len(config):,} settings; a training configuration has fewer than {MAX_CONFIG_KEYS}", "too_large")
    size = sum(len(key) + value.ByteSize() for key, value in config.items())
    if size > MAX_CONFIG_BYTES:
        raise invalid("config", f"holds {size:,} bytes of settings, over the limit of {MAX_CONFIG_BYTES:,}", "too_large")
    try:
        values = config_from_proto(config)
    except UnreadableValue as error:
        raise spec_problems(SpecError(error.problems)) from None
    asked = values.get("device", "auto")
    if asked != "auto" and (not isinstance(asked, str) or _resolved(asked) != _resolved(str(device))):
        raise invalid("config.device", f"this server trains on {device} (its --device); a run may ask for 'auto' or '{device}', got {asked!r}", "device")
    try:
        parsed = parse_config({**values, "device": str(device)})
    except ConfigError as error:
        raise spec_problems(error, "config") from None
    if parsed.world_size > 1:  # a job is one thread of the server; distributed runs launch processes of their own
        raise invalid("config.world_size", (
            f"must be 1 here, got {parsed.world_size}: the service trains each run in one process; for distributed "
            "training use the command line (specbuilder train SPEC --nproc N)"),
            "unsupported")
    return parsed


def _resolved(device: str) -> torch.device | None:
    """``device`` as torch names it (``cuda`` is ``cuda:0``), None if it is no device name."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        return None
    return torch.device(parsed.type, 0) if parsed.type == "cuda" and parsed.index is None else parsed


def train_data(request: service_pb2.TrainRequest, *, regions: RegionReader | None) -> tuple[str | Dataset, str]:
    """A built-in dataset's name, or a ``Dataset`` of the arrays sent; and the field it came from.

    Only built-in names are accepted: a client never names a file on the server.
    """
    kind = request.WhichOneof("data")
    if kind is None:
        raise invalid("data", f"is required: set dataset (one of {', '.join(DATASETS)}) or arrays (x and y tensors)", "missing")
    if kind == "dataset":
        if request.dataset not in DATASETS:
            hint = suggest(request.dataset, DATASETS) or f"; use one of {', '.join(DATASETS)}, or send arrays"
            raise invalid("dataset", f"unknown dataset '{request.dataset}'{hint}", "unknown_dataset")
        return request.dataset, "dataset"
    arrays = request.arrays
    for part in ("x", "y"):
        if not arrays.HasField(part):
            raise invalid(f"arrays.{part}", "is required", "missing")
    x = copy_to_numpy(arrays.x, "arrays.x", regions=regions)
    y = copy_to_numpy(arrays.y, "arrays.y", regions=regions)
    try:
        return from_arrays(x, y), "arrays"
    except DataError as error:
        raise invalid("arrays", str(error), "data") from None


def run_name(name: str, spec: ModelSpec) -> str:
    """The stored model's name: the one asked for, else the spec's."""
    if not name:
        return spec.name
    try:
        return check_name(name)
    except ValueError as error:
        raise invalid("name", str(error), "name") from None


def page_size(size: int) -> int:
    """ListModels' page size: 0 is ``DEFAULT_PAGE``, more than the store's ``MAX_PAGE`` is ``MAX_PAGE``."""
    if size < 0:
        raise invalid("page_size", f"must be >= 0 (0 means {DEFAULT_PAGE}), got {size}", "range")
    return min(size or DEFAULT_PAGE, MAX_PAGE)


def status_filter(status: int) -> str | None:
    """The store's status name for a ``RunStatus`` filter; None for unspecified (all)."""
    if status not in service_pb2.RunStatus.values():
        raise invalid("status", f"unknown RunStatus value {status}; use one of {', '.join(service_pb2.RunStatus.keys())}", "enum")
    return None if status == service_pb2.RUN_STATUS_UNSPECIFIED else status_name(status)
