"""``LayerStats``: a monitored layer's statistics, derived from its ``LayerState`` on the host.

Definitions (the docstrings of the fields say the same):

- ``count``: elements seen; ``nan_count`` / ``inf_count``: NaN and +-inf among them.
- ``mean``, ``std`` (population, ddof 0), ``min``, ``max``: over the finite values only; None
  when there were none. The histogram counts the finite values only, too.
- ``zero_fraction``: exact zeros / ``count``.
- ``saturated_fraction``: elements in the activation's flat region / ``count``. The flat region
  is the registry's (``ActivationKind.flat``: where the derivative is below 1% of its maximum),
  tested on the activation's input ``x`` and output ``y``; NaN is never flat.
- ``dead_fraction``: units (the feature dim of a per-sample vector, else the channel dim: dim 1
  of the batched tensor) that sat in the flat region for every sample and position seen —
  dying ReLUs — over all units. Layers without a flat region (``flat`` None, and every layer
  that is not an activation) report 0 saturated and 0 dead.
- ``grad_norm``: mean over backward passes of ``||dL/dy||`` at the layer's output; None
  without a backward pass.
- ``entropy``, ``max_probability``: softmax-like layers only, means over rows along their
  ``dim`` (rows with non-finite entropy left out); None for other layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from specbuilder.stats.probe import Probe
from specbuilder.stats.state import (
    COUNT,
    ENTROPY_SUM,
    FLAT_COUNT,
    GRAD_NORM_SUM,
    GRAD_PASSES,
    HISTOGRAM,
    INF_COUNT,
    M2,
    MAX,
    MAX_PROBABILITY_SUM,
    MEAN,
    MIN,
    NAN_COUNT,
    ROWS,
    ZERO_COUNT,
)


class Histogram(BaseModel):
    """Counts of the finite values in fixed bins ``[edges[i], edges[i+1])`` (see ``binning``)."""

    model_config = ConfigDict(frozen=True)

    scale: Literal["linear", "symlog"]
    edges: list[float]
    """``len(counts) + 1`` edges; values beyond the outer ones are counted in the end bins."""
    counts: list[int]


class LayerStats(BaseModel):
    """Statistics of one monitored layer over a window of passes (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    index: int
    name: str
    kind: str
    """The layer type, as in the spec (``relu``, ``linear``)."""
    count: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    nan_count: int
    inf_count: int
    zero_fraction: float
    saturated_fraction: float
    dead_fraction: float
    units: int
    """Units the dead fraction is taken over."""
    histogram: Histogram
    grad_norm: float | None
    entropy: float | None
    max_probability: float | None


def summarize(probe: Probe, counts: Sequence[int], moments: Sequence[float], alive_units: int) -> LayerStats:
    """``LayerStats`` from a state's values on the host, as Python numbers (``Accumulators.host``)."""
    count = int(counts[COUNT])
    finite = count - int(counts[NAN_COUNT]) - int(counts[INF_COUNT])
    rows = int(counts[ROWS])
    passes = int(counts[GRAD_PASSES])
    has_flat = probe.flat is not None and count > 0
    return LayerStats(
        index=probe.index,
        name=probe.name,
        kind=probe.node.layer.type,
        count=count,
        mean=float(moments[MEAN]) if finite else None,
        std=math.sqrt(max(0.0, float(moments[M2])) / finite) if finite else None,
        min=float(moments[MIN]) if finite else None,
        max=float(moments[MAX]) if finite else None,
        nan_count=int(counts[NAN_COUNT]),
        inf_count=int(counts[INF_COUNT]),
        zero_fraction=int(counts[ZERO_COUNT]) / count if count else 0.0,
        saturated_fraction=int(counts[FLAT_COUNT]) / count if has_flat else 0.0,
        dead_fraction=(probe.units - alive_units) / probe.units if has_flat else 0.0,
        units=probe.units,
        histogram=Histogram(
            scale="symlog" if probe.scheme.log else "linear",
            edges=list(probe.scheme.edges()),
            counts=list(counts[HISTOGRAM:]),
        ),
        grad_norm=float(moments[GRAD_NORM_SUM]) / passes if passes else None,
        entropy=float(moments[ENTROPY_SUM]) / rows if rows else None,
        max_probability=float(moments[MAX_PROBABILITY_SUM]) / rows if rows else None,
    )
