"""``Probe``: what the monitor knows about one monitored layer before it sees any data.

Read once from the spec node and the registry entry: the unit count, the fixed histogram bins,
how to test the flat region, and the probability dimension of softmax-like layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from specbuilder.kinds import ActivationKind, FlatBounds, FlatRegion, check_dim
from specbuilder.spec import Node
from specbuilder.stats.binning import BinScheme
from specbuilder.stats.native import FLAT_ABOVE, FLAT_BELOW, FLAT_INSIDE, FLAT_MASK, FLAT_OUTSIDE


@dataclass(frozen=True)
class FlatTest:
    """How the kernel tests the flat region: a float32 interval with closed ends, or a mask."""

    mode: int
    """``FLAT_BELOW`` (x <= hi), ``FLAT_ABOVE`` (x >= lo), ``FLAT_INSIDE``, ``FLAT_OUTSIDE`` (of
    [lo, hi], never NaN), or ``FLAT_MASK`` (the registry's ``where`` computes a bool mask)."""
    lo: float = -math.inf
    hi: float = math.inf
    of_output: bool = False

    @classmethod
    def of(cls, region: FlatRegion, params: Mapping[str, Any]) -> FlatTest:
        """The registry's ``bounds`` in kernel form, else a mask from its ``where``."""
        bounds = region.bounds_for(params)
        if bounds is None:
            return cls(FLAT_MASK)
        lo, hi = _closed(bounds)
        if not bounds.inside:
            return cls(FLAT_OUTSIDE, lo, hi, bounds.of_output)
        if lo == -math.inf:
            return cls(FLAT_BELOW, lo, hi, bounds.of_output)
        if hi == math.inf:
            return cls(FLAT_ABOVE, lo, hi, bounds.of_output)
        return cls(FLAT_INSIDE, lo, hi, bounds.of_output)

    def mask(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The flat elements as the kernel finds them, in torch ops (an interval mode only)."""
        v = y if self.of_output else x
        if self.mode == FLAT_BELOW:
            return v <= self.hi
        if self.mode == FLAT_ABOVE:
            return v >= self.lo
        inside = (v >= self.lo) & (v <= self.hi)
        return inside if self.mode == FLAT_INSIDE else ~inside & ~torch.isnan(v)


def _closed(bounds: FlatBounds) -> tuple[float, float]:
    """Float32 bounds that make every comparison closed: ``x > lo`` is ``x >= next_up(lo)``.

    For an outside region the interval is that of the values that are *not* flat.
    """
    lo, hi = np.float32(bounds.lo), np.float32(bounds.hi)
    up, down = np.float32(math.inf), np.float32(-math.inf)
    if bounds.inside:
        return float(lo if bounds.lo_closed else np.nextafter(lo, up)), float(hi if bounds.hi_closed else np.nextafter(hi, down))
    return float(np.nextafter(lo, up) if bounds.lo_closed else lo), float(np.nextafter(hi, down) if bounds.hi_closed else hi)


@dataclass(frozen=True)
class Probe:
    """One monitored layer."""

    node: Node
    units: int
    """Size of the unit dimension (dim 1 of the batched output)."""
    scheme: BinScheme
    flat: FlatTest | None
    """None: the layer has no flat region (not an activation, or its entry declares none)."""
    probability_dim: int | None
    """The dim of a softmax-like layer, normalized for the batched tensor; else None."""
    log_probability: bool
    """Outputs are log-probabilities (log_softmax)."""

    @classmethod
    def of(cls, node: Node, bins: int) -> Probe:
        kind = node.kind
        params = node.layer.params()
        is_activation = isinstance(kind, ActivationKind)
        output_range = kind.range_for(params) if is_activation else (-math.inf, math.inf)
        scheme = BinScheme.for_range(output_range, bins)
        flat = FlatTest.of(kind.flat, params) if is_activation and kind.flat is not None else None
        probability = is_activation and kind.probability
        return cls(
            node=node,
            units=node.out_shape[0],
            scheme=scheme,
            flat=flat,
            probability_dim=check_dim(params["dim"], node.out_shape) if probability else None,
            log_probability=probability and output_range[1] == 0.0,
        )

    @property
    def index(self) -> int:
        return self.node.index

    @property
    def name(self) -> str:
        return self.node.name

    def flat_mask(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The flat elements (bool, shaped like ``y``): for float32, by the kernel's form of the
        registry's interval where it has one (a test holds it equal to ``where``), else by its
        ``where`` (the kernel's bounds are float32 values; ``where`` compares in the tensor's own
        dtype)."""
        if self.flat is not None and self.flat.mode != FLAT_MASK and y.dtype == torch.float32:
            return self.flat.mask(x, y)
        region = self.node.kind.flat
        if region is None:
            raise ValueError(f"layer {self.name} ({self.node.layer.type}) has no flat region")
        return region.where(x, y, self.node.layer.params()).expand_as(y)
