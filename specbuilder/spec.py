"""The spec: ``ModelSpec`` (pydantic v2), the one validator and source of truth.

Layer models are built from the registries (``LAYERS``, ``ACTIVATIONS``) by
``specbuilder.registry.entry_model``, so a new registry entry is a new spec type with no other
edit. Validation runs in two stages and reports every problem at once: field checks by pydantic
(types, bounds, unknown fields, NaN), then shape inference through the stack (inferred sizes,
kernels that do not fit, dims out of range, parameter budget). A ``ModelSpec`` that exists is
valid, and knows its shapes.

A hostile spec costs bounded work: its text is at most ``MAX_SPEC_SIZE``, a report lists its
first ``MAX_PROBLEMS`` field problems, and every size, rank and real number is bounded.
"""

from __future__ import annotations

import hashlib
import json
import keyword
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from specbuilder.activations import ACTIVATIONS
from specbuilder.errors import Loc, SpecError, format_path, friendly, reraise, suggest
from specbuilder.kinds import ActivationKind, LayerError, LayerKind, Shape
from specbuilder.layers import LAYERS, MAX_SIZE, PositiveInt
from specbuilder.registry import JSON_SCHEMA_DIALECT, EntrySpec, Strict, entry_model, one_of, shorthand, shorthand_validator
from specbuilder_wire.results import Problem

DEFAULT_MAX_PARAMS = 100_000_000
"""Specs with more parameters are refused unless ``max_params`` says otherwise."""
MAX_SAMPLE_ELEMENTS = 100_000_000
"""No layer may output more elements than this per sample."""
MAX_RANK = 7
"""No layer may output more dimensions per sample: with the batch dimension, the 8 a wire tensor carries."""
MAX_LAYERS = 1024
MAX_PROBLEMS = 100
"""Field problems a report lists: each costs work to explain, and a hostile spec can have millions."""
MAX_SPEC_SIZE = 1 << 20
"""Longest spec text (characters of JSON, or bytes of a message): a spec of ``MAX_LAYERS`` layers takes a
tenth of it, and validating costs time in proportion."""
FLOAT32_MAX = 3.4028234663852886e38
"""The largest float32 (``numpy.finfo("float32").max``): real parameters must fit the precision models compute in."""

Style = Literal["sequential", "functional"]
"""How a spec compiles: an ``nn.Sequential``, or a module whose ``forward`` calls torch functions."""
STYLES: tuple[Style, ...] = ("sequential", "functional")

KINDS: dict[str, LayerKind] = {**LAYERS, **ACTIVATIONS}
"""Every layer type a spec may use, activations included."""

RESERVED_NAMES = frozenset(
    """T_destination add_module append apply bfloat16 buffers call_super_init children compile cpu cuda
    double dump_patches eval extend extra_repr float forward get_buffer get_extra_state get_parameter
    get_submodule half insert ipu load_state_dict modules mtia named_buffers named_children
    named_modules named_parameters parameters pop register_backward_hook register_buffer
    register_forward_hook register_forward_pre_hook register_full_backward_hook
    register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter
    register_state_dict_post_hook register_state_dict_pre_hook register_tap requires_grad_ set_extra_state
    set_submodule share_memory spec state_dict to to_empty train training type xpu zero_grad""".split()
)
"""Attributes a layer name would shadow: ``nn.Module``'s, ``nn.Sequential``'s, ``FunctionalModel``'s and
``spec``, which every compiled module carries (a test keeps this in step with torch)."""


def _spellings(name: str, kind: LayerKind) -> tuple[str, ...]:
    """The names a spec may give the kind ``name``: itself, torch's class name, itself without underscores, its aliases."""
    return (name, kind.module.rpartition(".")[2], name.replace("_", ""), *kind.aliases)


def _type_names() -> dict[str, str]:
    table: dict[str, str] = {}
    for name, kind in KINDS.items():
        for alias in _spellings(name, kind):
            table.setdefault(alias.lower(), name)
    return table


TYPE_NAMES = _type_names()
"""Lower-cased name, alias or torch class name -> canonical layer type."""


def lookup_type(name: str) -> str | None:
    """The canonical type for a name, alias or torch class name, case-insensitive."""
    return TYPE_NAMES.get(name.lower())


def other_names(name: str) -> tuple[str, ...]:
    """Every other name ``lookup_type`` takes for the type ``name``, one spelling each: names match
    case-insensitively, so a spelling that is ``name`` in another case (``Linear``) is left out, and of
    two that differ only in case the torch class name is given (``LeakyReLU``, not ``leakyrelu``)."""
    seen = {name.lower()}
    names = []
    for spelling in _spellings(name, KINDS[name]):
        if spelling.lower() not in seen and TYPE_NAMES.get(spelling.lower()) == name:
            seen.add(spelling.lower())
            names.append(spelling)
    return tuple(names)


def _check_layer_name(value: str) -> str:
    if keyword.iskeyword(value) or value in RESERVED_NAMES:
        raise PydanticCustomError("reserved_name", "'{name}' is reserved by Python or torch.nn.Module; pick another", {"name": value})
    return value


LayerName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", max_length=64), AfterValidator(_check_layer_name)
]
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]


class LayerSpec(EntrySpec):
    """Base of every layer model: a ``type``, an optional module ``name`` and the kind's parameters."""

    name: LayerName | None = None
    entry: ClassVar[LayerKind]

    @property
    def kind(self) -> LayerKind:
        """The registry entry of the layer's type."""
        return self.entry


class ActivationSpec(LayerSpec):
    """Base of every activation model."""

    entry: ClassVar[ActivationKind]

    @property
    def kind(self) -> ActivationKind:
        """The registry entry of the activation's type."""
        return self.entry


def _canonical_type(value: Any) -> Any:
    if isinstance(value, Mapping) and isinstance(value.get("type"), str):
        canonical = lookup_type(value["type"])
        if canonical is not None and canonical != value["type"]:
            return {**value, "type": canonical}
    return value


def _activation_shorthand(value: Any) -> Any:
    return _canonical_type(shorthand(value))


def _model(kind: LayerKind, base: type[LayerSpec], **fields: Any) -> type[LayerSpec]:
    """The layer model of ``kind``, named for its torch class (``LeakyReLUSpec``)."""
    return entry_model(kind, base, kind.module.rpartition(".")[2] + "Spec", module=__name__, **fields)


ACTIVATION_MODELS: dict[str, type[LayerSpec]] = {k.name: _model(k, ActivationSpec) for k in ACTIVATIONS.values()}
ActivationField = Annotated[one_of(ACTIVATION_MODELS) | None, shorthand_validator(ACTIVATION_MODELS, _activation_shorthand, nullable=True)]
LAYER_MODELS: dict[str, type[LayerSpec]] = {
    **{
        k.name: _model(k, LayerSpec, activation=(ActivationField, Field(None, description="shorthand for an activation layer after this one")))
        for k in LAYERS.values()
    },
    **ACTIVATION_MODELS,
}
"""Canonical type -> pydantic model, for every layer type."""
AnyLayer = Annotated[one_of(LAYER_MODELS), BeforeValidator(_canonical_type)]


@dataclass(frozen=True)
class Node:
    """One module of the compiled model: a spec layer, or the activation a layer's shorthand adds."""

    index: int
    loc: Loc
    name: str
    layer: LayerSpec
    in_shape: Shape
    out_shape: Shape
    kwargs: Mapping[str, Any]
    """Keyword arguments of the torch module, inferred sizes filled in."""
    num_params: int
    macs: int
    """Estimated multiply-adds of the forward pass for one sample: ``Inferred.macs``, or one per output element."""

    @property
    def kind(self) -> LayerKind:
        return self.layer.kind

    @property
    def path(self) -> str:
        return format_path(self.loc)

    @property
    def is_activation(self) -> bool:
        return isinstance(self.layer, ActivationSpec)


class ModelSpec(Strict):
    """A network as data: an input shape and a stack of layers."""

    model_config = ConfigDict(json_schema_extra={"$schema": JSON_SCHEMA_DIALECT})
    name: ModelName = "model"
    input_shape: Annotated[list[PositiveInt], Field(min_length=1, max_length=4, description="per-sample shape, no batch dimension")]
    layers: Annotated[list[AnyLayer], Field(min_length=1, max_length=MAX_LAYERS)]

    _nodes: tuple[Node, ...] = PrivateAttr(default=())
    _macs: int = PrivateAttr(default=0)
    FIELDS: ClassVar[tuple[str, ...]] = ("name", "input_shape", "layers")

    @model_validator(mode="wrap")
    @classmethod
    def _validate_all(cls, data: Any, handler: Any, info: ValidationInfo) -> ModelSpec:
        try:
            spec = handler(data)
        except ValidationError as error:
            raise _rewrite(error) from None
        max_params = (info.context or {}).get("max_params", DEFAULT_MAX_PARAMS)
        nodes, problems = _analyze(spec, max_params)
        if problems:
            raise reraise(cls.__name__, problems)
        spec._nodes = tuple(nodes)
        spec._macs = sum(node.macs for node in nodes)
        return spec

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The modules the spec compiles to, in order, with their shapes."""
        return self._nodes

    @property
    def output_shape(self) -> Shape:
        return self._nodes[-1].out_shape

    @property
    def num_params(self) -> int:
        return sum(node.num_params for node in self._nodes)

    @property
    def macs_per_sample(self) -> int:
        """Estimated multiply-adds of one sample's forward pass: the nodes' ``macs`` summed once, at validation.

        Read from shape inference alone, so a spec too large to build is priced without building it.
        """
        return self._macs

    def flops(self, rows: int) -> int:
        """Estimated FLOPs of a forward pass over ``rows`` samples: ``2 * macs_per_sample * rows``.

        One multiply-add is 2 FLOPs, as torch's ``FlopCounterMode`` counts matmuls and convolutions;
        element-wise work is one multiply-add per element (see ``Inferred.macs``). An estimate to hold
        a call against a budget before running it, not a profile. Forward pass only: a training
        step's backward pass is not counted.
        """
        if rows < 0:
            raise ValueError(f"rows must be >= 0, got {rows}")
        return 2 * self._macs * rows

    def canonical_json(self) -> str:
        """Every field spelled out, keys sorted: equal for specs that compile to the same model."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def spec_hash(self) -> str:
        """SHA-256 of ``canonical_json()``: the key compiled modules are cached under."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def to_json(self, indent: int | None = 2) -> str:
        """The spec as its author would write it: defaults left out."""
        return self.model_dump_json(indent=indent, exclude_defaults=True)

    def _batch_statistics(self, training: bool) -> Iterator[Node]:
        """The modules that normalize with the batch's own statistics: batch norm, always while
        training, and in evaluation when it keeps no running ones."""
        for node in self._nodes:
            uses = node.kind.batch_statistics
            if uses is not None and (training or uses(node.layer.params())):
                yield node

    def needs_two_samples(self, training: bool = False) -> Node | None:
        """The first module that cannot take a batch of one sample (in training, or in evaluation); None when all can.

        Batch statistics (``_batch_statistics``) over a single value per channel are refused by torch.
        """
        return next((node for node in self._batch_statistics(training) if math.prod(node.in_shape[1:]) == 1), None)

    @property
    def samples_independent(self) -> bool:
        """Whether in evaluation each sample's output depends on that sample alone, so batches may be
        merged and split freely; False when some module uses batch statistics in evaluation."""
        return next(self._batch_statistics(False), None) is None

    def batch_problem(self, shape: Sequence[int]) -> str | None:
        """Why ``shape`` is not a batch ``[N, *input_shape]`` with N >= 1, and what to do; None when it is one."""
        shape, want = tuple(shape), tuple(self.input_shape)
        if len(shape) == len(want) + 1 and shape[1:] == want:
            if shape[0] == 0:
                return f"the batch is empty ({_dims(shape)}); send at least one sample"
            node = self.needs_two_samples() if shape[0] == 1 else None
            if node is None:
                return None
            return (f"{node.path} ({node.layer.type}) normalizes with the batch's own statistics (it keeps no running ones) "
                    f"and sees one value per channel in one sample, which torch refuses; send at least 2 samples")
        if shape == want:
            hint = f"add the batch dimension: shape {_dims((1, *want))} for one sample"
        elif len(shape) >= 2 and math.prod(shape[1:]) == math.prod(want):
            hint = f"reshape it to {_dims((shape[0], *want))}, or set the spec's input_shape to {_dims(shape[1:])}"
        elif len(shape) >= 2:
            hint = (f"each sample has {math.prod(shape[1:])} elements but the spec's input_shape needs {math.prod(want)}; "
                    "send the data the model was built for, or change its input_shape")
        else:
            hint = f"send a batch: shape [N, {', '.join(map(str, want))}]"
        return f"expected [N, {', '.join(map(str, want))}] (a batch of the spec's input_shape {_dims(want)}), got {_dims(shape)}: {hint}"

    def summary(self) -> str:
        """A layer table: index, module name, type, output shape, parameter count."""
        rows = [("#", "name", "type", "output shape", "params")]
        rows += [(str(n.index), n.name, n.layer.type, _shape_text(n.out_shape), f"{n.num_params:,}") for n in self._nodes]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join(c.rjust(w) if i in (0, 4) else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"input {_shape_text(tuple(self.input_shape))} -> output {_shape_text(self.output_shape)}, {self.num_params:,} parameters")
        return "\n".join(lines)


def _dims(shape: Sequence[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _shape_text(shape: Shape) -> str:
    return "[N, " + ", ".join(map(str, shape)) + "]"


def _expand(layers: list[LayerSpec]) -> Iterator[tuple[Loc, LayerSpec]]:
    for i, layer in enumerate(layers):
        yield ("layers", i), layer
        activation = getattr(layer, "activation", None)
        if activation is not None:
            yield ("layers", i, "activation"), activation


def _analyze(spec: ModelSpec, max_params: int | None) -> tuple[list[Node], list[tuple[Loc, str, str, Any]]]:
    """Shapes, names and budgets through the whole stack; every problem found."""
    problems: list[tuple[Loc, str, str, Any]] = []
    expanded = list(_expand(spec.layers))
    owners: dict[str, Loc] = {}
    names = []
    for index, (loc, layer) in enumerate(expanded):
        name = layer.name or f"{layer.type}_{index}"
        if name in owners:
            what = "name" if layer.name else "automatic name"
            problems.append((loc + ("name",), "duplicate_name", f"{what} '{name}' is already used by {format_path(owners[name])}; names must be unique", layer.name))
        owners.setdefault(name, loc)
        names.append(name)

    nodes: list[Node] = []
    shape: Shape = tuple(spec.input_shape)
    if math.prod(shape) > MAX_SAMPLE_ELEMENTS:
        problems.append((("input_shape",), "too_large", f"has {math.prod(shape):,} elements per sample, over the limit of {MAX_SAMPLE_ELEMENTS:,}", spec.input_shape))
        return nodes, problems
    for index, (loc, layer) in enumerate(expanded):
        for key, value in layer.params().items():
            if isinstance(value, float) and abs(value) > FLOAT32_MAX:
                problems.append((loc + (key,), "float_range", f"must be within float32's range (±{FLOAT32_MAX:.7g}), which models compute in; got {value:g}", value))
        try:
            inferred = layer.kind.infer(layer.params(), shape)
        except LayerError as error:
            field = (error.field,) if error.field else ()
            problems.append((loc + field, "shape", str(error), getattr(layer, error.field) if error.field else layer.type))
            return nodes, problems
        if len(inferred.out_shape) > MAX_RANK:
            problems.append((loc, "too_many_dims", f"outputs {len(inferred.out_shape)} dimensions per sample, over the limit of {MAX_RANK}", layer.type))
            return nodes, problems
        size = math.prod(inferred.out_shape)
        if size > MAX_SAMPLE_ELEMENTS:
            problems.append((loc, "too_large", f"outputs {size:,} elements per sample, over the limit of {MAX_SAMPLE_ELEMENTS:,}", layer.type))
            return nodes, problems
        macs = size if inferred.macs is None else inferred.macs
        nodes.append(Node(index, loc, names[index], layer, shape, inferred.out_shape, inferred.kwargs, inferred.num_params, macs))
        shape = inferred.out_shape
    total = sum(node.num_params for node in nodes)
    if max_params is not None and total > max_params:
        problems.append((("layers",), "too_many_parameters", f"the model has {total:,} parameters, over the limit of {max_params:,} (max_params)", total))
    return nodes, problems


def _fields_of(tag: str | None) -> tuple[str, ...]:
    if tag is None:
        return ModelSpec.FIELDS
    return tuple(LAYER_MODELS[tag].model_fields)


def _rewrite(error: ValidationError) -> ValidationError:
    """Pydantic's errors with discriminator tags dropped from paths and clearer messages; the first ``MAX_PROBLEMS``."""
    problems = []
    details = error.errors(include_url=False)
    if len(details) > MAX_PROBLEMS:
        problems.append(((), "too_many_problems", f"{len(details):,} problems; the first {MAX_PROBLEMS} follow, fix them first", len(details)))
    for detail in details[:MAX_PROBLEMS]:
        loc: list[int | str] = []
        tag = None
        previous: int | str | None = None
        for part in detail["loc"]:
            # A union tag follows a list index or "activation"; a field may share a tag's name (threshold).
            if isinstance(part, str) and part in KINDS and (isinstance(previous, int) or previous == "activation"):
                tag = previous = part
                continue
            loc.append(part)
            previous = part
        detail = {**detail, "loc": tuple(loc)}
        kind = detail["type"]
        activation = bool(loc) and loc[-1] == "activation"
        what, examples = ("activation", "'relu' or 'tanh'") if activation else ("layer type", "'linear' or 'relu'")
        if kind == "union_tag_invalid" and isinstance(detail["input"], Mapping) and not isinstance(detail["input"]["type"], str):
            got = detail["input"]["type"]
            message = f"must be a string: {'an' if activation else 'a'} {what} such as {examples}, got {type(got).__name__} {got!r}"
            problems.append((tuple(loc) + ("type",), "string_type", message, got))
            continue
        if kind == "union_tag_invalid":
            got = detail["ctx"]["tag"]
            message = f"unknown {what} '{got}'{suggest(got, ACTIVATIONS if activation else TYPE_NAMES)}"
            problems.append((tuple(loc) + ("type",), "unknown_type", message, got))
            continue
        if kind == "union_tag_not_found":
            message = f"is required: {'an' if activation else 'a'} {what} such as {examples}"
            problems.append((tuple(loc) + ("type",), "missing", message, None))
            continue
        fields_at = {tuple(loc[:-1]): _fields_of(tag)}
        kind, message = friendly(detail, fields_at)
        problems.append((tuple(loc), kind, message, detail.get("input")))
    return reraise("ModelSpec", problems)


def check_size(size: int, unit: str) -> None:
    """``SpecError`` for a spec text longer than ``MAX_SPEC_SIZE``, before any of it is validated."""
    if size > MAX_SPEC_SIZE:
        raise SpecError([Problem("", f"the spec has {size:,} {unit}, over the limit of {MAX_SPEC_SIZE:,}; "
                                     f"a spec of {MAX_LAYERS:,} layers needs about a tenth of that", "too_large")])


def parse_spec(source: ModelSpec | Mapping[str, Any] | str | bytes | Path, *, max_params: int | None = DEFAULT_MAX_PARAMS) -> ModelSpec:
    """A validated ``ModelSpec`` from a spec, a dict, JSON text or a JSON file path.

    Raises ``SpecError`` listing every problem, each with its path.
    """
    context = {"max_params": max_params}
    try:
        if isinstance(source, ModelSpec):
            return ModelSpec.model_validate(source.model_dump(), context=context)
        if isinstance(source, Path):
            source = source.read_bytes()
        if isinstance(source, (str, bytes)):
            check_size(len(source), "characters" if isinstance(source, str) else "bytes")
            return ModelSpec.model_validate_json(source, context=context)
        return ModelSpec.model_validate(source, context=context)
    except ValidationError as error:
        raise SpecError.from_validation(error) from None


__all__ = [
    "ACTIVATION_MODELS", "DEFAULT_MAX_PARAMS", "KINDS", "LAYER_MODELS", "ActivationSpec", "LayerSpec",
    "ModelSpec", "Node", "lookup_type", "other_names", "parse_spec", "MAX_SIZE",
]
