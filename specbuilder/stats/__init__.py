"""Activation statistics: ``ActivationMonitor`` and what it reports.

``ActivationMonitor`` hooks a compiled model and keeps per-layer accumulators on the device
(``LayerState``: counts, float64 moments, min/max, a fixed-bin histogram, per-unit flags);
``stats()`` turns them into ``LayerStats`` with one host copy. States merge exactly
(``merge_states``), across batches, windows or distributed ranks.
"""

from specbuilder.stats.monitor import ActivationMonitor
from specbuilder.stats.report import Histogram, LayerStats
from specbuilder.stats.state import LayerState, merge_states

__all__ = ["ActivationMonitor", "Histogram", "LayerState", "LayerStats", "merge_states"]
