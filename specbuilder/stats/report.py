"""A monitored layer's ``LayerStats`` (``specbuilder_wire.results``, which defines each field),
derived from its ``LayerState`` on the host.

The flat region is the registry's (``ActivationKind.flat``); a layer whose probe has none
(``flat`` None, and every layer that is not an activation) reports 0 saturated and 0 dead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
from specbuilder_wire.results import Histogram, LayerStats


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
