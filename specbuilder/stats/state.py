"""``LayerState``: the raw accumulators of one monitored layer, and their exact merge.

Three tensors on the layer's device hold everything; the statistics are derived from them only
when asked (``report.summarize``). Counts and histogram bins add; moments merge by Chan et al.'s
parallel formula; min/max combine; per-unit flags OR. So the state of a stream split anywhere —
into batches, windows, or ranks of a distributed job (all-gather, then ``merge_states``) —
equals the state of the whole stream: exactly for counts, bins, flags and extremes, to float64
rounding for mean and variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

COUNT, NAN_COUNT, INF_COUNT, ZERO_COUNT, FLAT_COUNT, GRAD_PASSES, ROWS, HISTOGRAM = range(8)
"""Layout of ``counts``: elements seen, NaN, +-inf, exact zeros, in the flat region, backward
passes that reached the layer, rows of a probability layer; then the histogram bins."""
MEAN, M2, MIN, MAX, GRAD_NORM_SUM, ENTROPY_SUM, MAX_PROBABILITY_SUM = range(7)
"""Layout of ``moments``: mean and sum of squared deviations of the finite values (``M2``),
finite min and max, sum of gradient norms, sums of row entropy and row max probability."""
MOMENTS = 7


@dataclass
class LayerState:
    """The accumulators of one monitored layer (tensors on one device; see the layouts above)."""

    counts: torch.Tensor
    """int64 ``[7 + bins]``."""
    moments: torch.Tensor
    """float64 ``[7]``."""
    alive: torch.Tensor
    """bool ``[units]``: the unit left the flat region at least once."""

    @classmethod
    def empty(cls, bins: int, units: int, device: torch.device | str = "cpu") -> LayerState:
        """The state of a layer that has seen nothing. Never an inference tensor, so it can be
        updated in place both inside and outside ``torch.inference_mode``."""
        with torch.inference_mode(False):
            return cls(
                torch.empty(HISTOGRAM + bins, dtype=torch.int64, device=device),
                torch.empty(MOMENTS, dtype=torch.float64, device=device),
                torch.empty(units, dtype=torch.bool, device=device),
            ).clear()

    def clear(self) -> LayerState:
        """Make these tensors (in place) the state of a layer that has seen nothing. The
        infinities are filled in on the device: ``moments[MIN] = math.inf`` would copy a host
        scalar into a CUDA tensor, a blocking copy (a host sync)."""
        self.counts.zero_()
        self.moments.zero_()
        self.moments[MIN].fill_(math.inf)
        self.moments[MAX].fill_(-math.inf)
        self.alive.zero_()
        return self

    @property
    def bins(self) -> int:
        return self.counts.numel() - HISTOGRAM

    @property
    def histogram(self) -> torch.Tensor:
        return self.counts[HISTOGRAM:]

    @property
    def finite_count(self) -> torch.Tensor:
        """Finite values seen (0-d int64)."""
        return self.counts[COUNT] - self.counts[NAN_COUNT] - self.counts[INF_COUNT]

    def clone(self) -> LayerState:
        return LayerState(self.counts.clone(), self.moments.clone(), self.alive.clone())

    def copy_(self, other: LayerState) -> LayerState:
        """Overwrite these tensors (in place) with ``other``'s values."""
        self.counts.copy_(other.counts)
        self.moments.copy_(other.moments)
        self.alive.copy_(other.alive)
        return self


def merge_states(a: LayerState, b: LayerState) -> LayerState:
    """The state of both streams together, as one pass over both would have left it."""
    if a.counts.shape != b.counts.shape or a.alive.shape != b.alive.shape:
        raise ValueError(
            f"states of different layers: {a.bins} vs {b.bins} bins, {a.alive.numel()} vs {b.alive.numel()} units"
        )
    n_a, n_b = a.finite_count.double(), b.finite_count.double()
    n = (n_a + n_b).clamp(min=1.0)
    delta = b.moments[MEAN] - a.moments[MEAN]
    moments = a.moments + b.moments
    moments[MEAN] = a.moments[MEAN] + delta * (n_b / n)
    moments[M2] = a.moments[M2] + b.moments[M2] + delta * delta * (n_a * n_b / n)
    moments[MIN] = torch.minimum(a.moments[MIN], b.moments[MIN])
    moments[MAX] = torch.maximum(a.moments[MAX], b.moments[MAX])
    return LayerState(a.counts + b.counts, moments, a.alive | b.alive)
