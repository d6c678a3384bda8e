"""Activation statistics: ``ActivationMonitor`` and what it reports.

``ActivationMonitor`` hooks a compiled model and keeps per-layer accumulators on the device
(``LayerState``: counts, float64 moments, min/max, a fixed-bin histogram, per-unit flags);
``stats()`` turns them into ``LayerStats`` with one host copy. States merge exactly
(``merge_states``), across batches, windows or distributed ranks; ``all_merge_states`` and
``all_merge_monitor`` do it across the ranks of a ``torch.distributed`` process group.
"""

from specbuilder.stats.distributed import all_merge_monitor, all_merge_states
from specbuilder.stats.monitor import ActivationMonitor
from specbuilder.stats.report import Histogram, LayerStats
from specbuilder.stats.state import LayerState, merge_states

__all__ = ["ActivationMonitor", "Histogram", "LayerState", "LayerStats", "all_merge_monitor", "all_merge_states", "merge_states"]
