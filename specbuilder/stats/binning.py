"""Histogram bins that never move, so counts from any batches, windows or ranks add exactly.

For a layer whose output range (``ActivationKind.range_for``) is ``[lo, hi]``:

- **bounded** (both ends finite): ``bins`` bins uniform in ``y`` over ``[lo, hi]``;
- **otherwise**: bins uniform in ``s(y) = sign(y) * log2~(1 + |y| / C)`` over ``[s(a), s(b)]``, where
  ``a = lo`` or ``-SPAN`` and ``b = hi`` or ``SPAN`` (``C = 1e-3``, ``SPAN = 1e4``): about linear for
  ``|y| < C``, logarithmic beyond (64 bins over ``[0, 1e4]`` are ~0.11 decade each). ``log2~`` is
  log2 interpolated linearly between powers of two, read exactly off the float32 bit pattern
  (``s`` is kept in units of 2^-23), so a value's bin is cheap and bit-exact everywhere it is
  computed. Layers that are not activations (linear, conv, ...) are unbounded.

Values below ``a`` or above ``b`` fold into the end bins; NaN and +-inf are not binned (they are
counted apart), so the counts always sum to the number of finite values.

A value's bin is ``floor(clamp((s(y) - s(a)) * scale, 0, bins - 1))`` in float32 arithmetic,
computed the same way here (torch) and by the native kernel. ``edges()`` are the float32
values where that index steps (found by bisection over float32 values), so
``edges[i] <= y < edges[i + 1]`` holds exactly for every value in bin ``i``; ``edges[0]`` and
``edges[-1]`` are ``a`` and ``b``. Values are binned as float32: float64 outputs are rounded
first, half types convert exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

SYMLOG_C = 1e-3
"""Scale of the linear zone of the symlog bins."""
SPAN = 1e4
"""Symlog bins cover ``[-SPAN, SPAN]`` where the range is unbounded; beyond folds into the end bins."""
ONE_BITS = 0x3F800000
"""The bit pattern of float32 1.0."""
_INV_C = float(np.float32(1 / SYMLOG_C))
_FLOAT_MAX = float(np.finfo(np.float32).max)


def _f32(value: float) -> float:
    return float(np.float32(value))


@dataclass(frozen=True)
class BinScheme:
    """The fixed bins of one monitored layer (see the module docstring)."""

    bins: int
    log: bool
    """Bins are uniform in ``s(y)`` (symlog), not in ``y``."""
    lo: float
    hi: float
    origin: float
    """``s(lo)`` as float32."""
    scale: float
    """Bins per unit of ``s``, as float32."""

    @classmethod
    def for_range(cls, output_range: tuple[float, float], bins: int) -> BinScheme:
        """Linear bins over a finite range, symlog bins over a (half-)infinite one."""
        lo, hi = output_range
        log = not (math.isfinite(lo) and math.isfinite(hi))
        lo, hi = _f32(max(lo, -SPAN)), _f32(min(hi, SPAN))
        if not lo < hi:
            raise ValueError(f"histogram range must have lo < hi, got [{lo}, {hi}]")
        probe = cls(bins, log, lo, hi, 0.0, 1.0)
        s_lo, s_hi = (float(v) for v in probe.transform(torch.tensor([lo, hi])))
        return cls(bins, log, lo, hi, s_lo, _f32(bins / (s_hi - s_lo)))

    def transform(self, y: torch.Tensor) -> torch.Tensor:
        """``s(y)`` for float32 ``y``: ``y`` itself for linear bins."""
        if not self.log:
            return y
        return torch.copysign(((y.abs() * _INV_C + 1.0).view(torch.int32) - ONE_BITS).float(), y)

    def index(self, y: torch.Tensor) -> torch.Tensor:
        """The bin of each value (converted to float32), as int64; meaningless for NaN and inf."""
        return ((self.transform(y.float()) - self.origin) * self.scale).clamp_(0, self.bins - 1).long()

    def edges(self) -> tuple[float, ...]:
        """``bins + 1`` edges: ``lo``, the float32 values where the bin index steps, ``hi``."""
        return _edges(self)


@functools.cache
def _edges(scheme: BinScheme) -> tuple[float, ...]:
    """Bisection over float32 values, all edges at once (33 rounds); cached per scheme."""
    targets = torch.arange(1, scheme.bins, dtype=torch.int64)
    below = torch.full_like(targets, _order(-_FLOAT_MAX))  # index(below) < target
    above = torch.full_like(targets, _order(_FLOAT_MAX))  # index(above) >= target
    while bool((above - below > 1).any()):
        middle = (below + above) // 2
        reached = scheme.index(_from_order(middle)) >= targets
        above = torch.where(reached, middle, above)
        below = torch.where(reached, below, middle)
    return (scheme.lo, *_from_order(above).tolist(), scheme.hi)


def _order(value: float) -> int:
    """Float32 values as integers in the same order (-0.0 and 0.0 both map to 0)."""
    bits = int(np.float32(value).view(np.int32))
    return bits if bits >= 0 else -(bits & 0x7FFFFFFF)


def _from_order(keys: torch.Tensor) -> torch.Tensor:
    """The float32 values of int64 order keys (the inverse of ``_order``)."""
    bits = torch.where(keys >= 0, keys, (-keys) - 2**31)  # sign bit set, as a signed int32
    return bits.to(torch.int32).view(torch.float32)
