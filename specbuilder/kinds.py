"""What every layer kind declares: one record per kind drives the spec schema, shape inference,
the compiler (module and functional form), code generation, statistics and the docs.

A ``LayerKind`` is a registry ``Entry`` (``specbuilder.registry``). The records name torch
objects by dotted path (``"torch.nn.LeakyReLU"``, imported by ``registry.resolve``) rather than
holding them, so validating a spec never imports torch, and the code generator writes the same
names the compiler calls.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from specbuilder.registry import Entry

Shape = tuple[int, ...]
"""A per-sample shape: the batch dimension is never part of it."""

PASS_THROUGH = ""
"""``LayerKind.functional`` of a layer whose functional form is the identity."""


class LayerError(ValueError):
    """A layer does not fit its input shape or its own parameters; ``field`` names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Inferred:
    """What shape inference learns about one layer."""

    out_shape: Shape
    kwargs: Mapping[str, Any]
    """Keyword arguments for the torch module, inferred sizes filled in."""
    num_params: int = 0
    macs: int | None = None
    """Estimated multiply-adds of the forward pass for one sample; None: one per output element,
    the cost of an element-wise layer whatever its function (``exp`` and ``max`` count as one).
    An estimate to weigh a call against a budget before running it, not a profile: bias additions
    are left out, as torch's ``FlopCounterMode`` leaves them out."""


InferFn = Callable[[Mapping[str, Any], Shape], Inferred]


def same_shape(params: Mapping[str, Any], shape: Shape) -> Inferred:
    """Shape inference of an element-wise layer: output shape is input shape."""
    return Inferred(shape, dict(params))


def check_dim(dim: int, shape: Shape, field: str = "dim") -> int:
    """Normalize ``dim`` of a batched tensor whose per-sample shape is ``shape``."""
    rank = len(shape) + 1
    if not -rank <= dim < rank:
        raise LayerError(
            f"must be in [{-rank}, {rank - 1}] for an input of shape [N, {', '.join(map(str, shape))}], got {dim}",
            field,
        )
    return dim % rank


@dataclass(frozen=True)
class FlatBounds:
    """A flat region stated as an interval of the input ``x``: the mask (``holds``) and fused
    statistics kernels both read it.

    ``inside``: flat where ``lo < x < hi``; otherwise flat where ``x < lo or x > hi``. A closed
    end turns its ``<`` into ``<=`` (the bound itself is flat). NaN is never flat. Bounds are
    compared in the tensor's dtype, as torch compares a tensor with a Python number.
    ``of_output``: the same interval of the output ``y`` gives exactly the same elements (the
    activation is the identity off its flat region and maps the region onto the bounds, as
    ReLU does), so a kernel can test ``y`` and never read ``x``.
    """

    lo: float
    hi: float
    inside: bool = True
    lo_closed: bool = False
    hi_closed: bool = False
    of_output: bool = False

    @classmethod
    def below(cls, limit: float, closed: bool = False, of_output: bool = False) -> FlatBounds:
        """``x < limit`` (``x <= limit`` when closed)."""
        return cls(-math.inf, limit, lo_closed=True, hi_closed=closed, of_output=of_output)

    @classmethod
    def above(cls, limit: float, closed: bool = False) -> FlatBounds:
        """``x > limit`` (``x >= limit`` when closed)."""
        return cls(limit, math.inf, lo_closed=closed, hi_closed=True)

    @classmethod
    def outside(cls, lo: float, hi: float, closed: bool = False, of_output: bool = False) -> FlatBounds:
        """``x < lo or x > hi`` (``<=``, ``>=`` when closed)."""
        return cls(lo, hi, inside=False, lo_closed=closed, hi_closed=closed, of_output=of_output)

    def holds(self, x: Any) -> Any:
        """Which elements of tensor ``x`` lie in the region: a bool tensor shaped like ``x``, False
        at NaN. Each end is one comparison of ``x`` with a Python number, in ``x``'s dtype; a closed
        infinite end of an inside interval is left out (every value but NaN passes it, and the
        other end refuses NaN)."""
        if not self.inside:
            low = x <= self.lo if self.lo_closed else x < self.lo
            return low | (x >= self.hi if self.hi_closed else x > self.hi)
        ends = []
        if not (self.lo_closed and self.lo == -math.inf):
            ends.append(x >= self.lo if self.lo_closed else x > self.lo)
        if not (self.hi_closed and self.hi == math.inf):
            ends.append(x <= self.hi if self.hi_closed else x < self.hi)
        return functools.reduce(operator.and_, ends) if ends else x == x


NO_FLAT = FlatBounds(0.0, 0.0)
"""The empty region (``0 < x < 0``): for parameter values with no flat region."""


@dataclass(frozen=True)
class FlatRegion:
    """Where an activation's derivative is below 1% of its largest value.

    ``text`` says it for people. The region itself is stated once, by exactly one of:

    - ``bounds``: a ``FlatBounds`` interval of the input ``x``, or a function of the parameters
      giving one. The mask is the interval's (``FlatBounds.holds``) and a fused kernel tests the
      interval directly;
    - ``mask(x, y, params)``: a function of the input and output tensors giving a bool tensor,
      only for a region that is no interval of ``x`` (it reads ``y``, a product of ``x``, or
      counts NaN as flat); the entry says why.
    """

    text: str
    bounds: FlatBounds | Callable[[Mapping[str, Any]], FlatBounds] | None = None
    mask: Callable[[Any, Any, Mapping[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        if (self.bounds is None) == (self.mask is None):
            raise TypeError(f"flat region {self.text!r}: give exactly one of bounds and mask")

    def bounds_for(self, params: Mapping[str, Any]) -> FlatBounds | None:
        """The region as an interval of ``x`` for these parameters; None where it is given by ``mask``."""
        if self.bounds is None or isinstance(self.bounds, FlatBounds):
            return self.bounds
        return self.bounds(params)

    def where(self, x: Any, y: Any, params: Mapping[str, Any]) -> Any:
        """The flat elements: a bool tensor, from input ``x`` and output ``y`` (it broadcasts to ``y``)."""
        bounds = self.bounds_for(params)
        if bounds is None:
            assert self.mask is not None
            return self.mask(x, y, params)
        return bounds.holds(x)


@dataclass(frozen=True, kw_only=True)
class LayerKind(Entry):
    """One kind of layer: its parameters, shapes and torch forms."""

    module: str
    """Dotted path of the ``nn.Module`` class taking the inferred keyword arguments."""
    functional: str | None = None
    """Dotted path of the function the functional style calls; None calls the module,
    ``PASS_THROUGH`` returns the input unchanged."""
    functional_args: Mapping[str, str] = field(default_factory=dict)
    """Renames from module keyword to function keyword, where torch spells them apart."""
    passes_training: bool = False
    """The function takes ``training=`` (dropout, rrelu)."""
    infer: InferFn = same_shape
    positional: tuple[str, ...] = ()
    """Parameters the Python builder takes positionally, in order."""
    aliases: tuple[str, ...] = ()
    inferred: tuple[str, ...] = ()
    """Parameters that default to None and are then taken from the input shape (``in_features``): ``infer``
    fills them in, and a given value must agree."""
    example: Mapping[str, Any] = field(default_factory=dict)
    """Parameter values that differ from the defaults: used by docs, tests and round trips."""
    sample_shape: Shape = (6,)
    """A per-sample input shape that ``example`` fits."""
    batch_statistics: Callable[[Mapping[str, Any]], bool] | None = None
    """Batch normalization: the kind normalizes with the batch's own statistics while training, and
    this says whether also in evaluation, given the parameters. None for every other kind. Such a
    layer needs more than one value per channel in a batch (torch refuses a single one)."""

    @property
    def stateful(self) -> bool:
        """Held as a submodule (it has parameters or buffers) in the functional style."""
        return self.functional is None


@dataclass(frozen=True, kw_only=True)
class ActivationKind(LayerKind):
    """An activation: a layer kind with the facts statistics and docs need."""

    formula: str = ""
    output_range: tuple[float, float] = (-math.inf, math.inf)
    range_fn: Callable[[Mapping[str, Any]], tuple[float, float]] | None = None
    """Output range that depends on parameters (hardtanh, relu6); overrides ``output_range``."""
    flat: FlatRegion | None = None
    """Where gradients vanish; None where the activation has no such region."""
    probability: bool = False
    """Outputs are probabilities (or log-probabilities) along ``dim``: softmax-like."""

    def range_for(self, params: Mapping[str, Any]) -> tuple[float, float]:
        """The output range for these parameter values."""
        return self.range_fn(params) if self.range_fn else self.output_range
