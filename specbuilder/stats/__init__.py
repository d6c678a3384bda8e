"""Activation statistics: ``ActivationMonitor`` and what it reports.

``ActivationMonitor`` hooks a compiled model and keeps per-layer accumulators on the device
(``LayerState``: counts, float64 moments, min/max, a fixed-bin histogram, per-unit flags);
``stats()`` turns them into ``LayerStats`` with one host copy. States merge exactly
(``merge_states``), across batches, windows or distributed ranks; ``all_merge_states`` and
``all_merge_monitor`` do it across the ranks of a ``torch.distributed`` process group.

``LayerStats`` and ``Histogram`` are the wire package's (``specbuilder_wire.results``), shared
with the server and the client, and importing them from here imports no torch: the names that
need it load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from specbuilder_wire.results import Histogram, LayerStats

_LAZY = {
    "ActivationMonitor": "specbuilder.stats.monitor",
    "LayerState": "specbuilder.stats.state",
    "merge_states": "specbuilder.stats.state",
    "all_merge_monitor": "specbuilder.stats.distributed",
    "all_merge_states": "specbuilder.stats.distributed",
}

__all__ = ["Histogram", "LayerStats", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'specbuilder.stats' has no attribute {name!r}")
