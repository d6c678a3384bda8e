"""One evaluation pass: batches through a ready model, outputs back, statistics over all of them.

A ``Pass`` serves one Evaluate call (one batch) or one StreamEvaluate call (many). Each batch
runs under ``torch.inference_mode()`` and the model's lock; the statistics monitor, when asked
for, is attached for the whole pass but enabled only while this pass's own batches run, so
other calls on the same shared module neither see it nor feed it. The ``amp`` option runs each
batch under autocast (statistics are still taken in float32). On CUDA nothing here waits for
the device: compute time is measured with events and read once, when the pass reports it.
"""

from __future__ import annotations

import time
from types import TracebackType

import torch

from specbuilder.devices import DeviceTimer, amp_dtype, autocast
from specbuilder.stats import ActivationMonitor, LayerStats
from specbuilder_server.models import Ready
from specbuilder_server.requests import Options


class Pass:
    """Batches through ``ready`` with ``options``; ``seconds`` counts the time spent computing."""

    def __init__(self, ready: Ready, options: Options) -> None:
        self.ready = ready
        self.options = options
        self._timer = DeviceTimer(ready.device)
        self._precision = autocast(ready.device, amp_dtype(options.amp))
        self.batches = 0
        self.rows = 0
        self._monitor: ActivationMonitor | None = None

    def __enter__(self) -> Pass:
        if self.options.layers is not None:
            with self.ready.lock:  # hooks must not change while another call's forward runs
                self._monitor = ActivationMonitor(self.ready.module, layers=self.options.layers, bins=self.options.bins, grads=False)
                self._monitor.enabled = False
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self._monitor is not None:
            with self.ready.lock:
                self._monitor.close()

    @property
    def seconds(self) -> float:
        """Time spent computing so far (on CUDA, reading it waits for the batches queued)."""
        return self._timer.seconds

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """The model's output for ``batch`` (on the model's device, possibly still being computed
        there); statistics accumulate."""
        started = self._timer.start()
        with self.ready.lock, torch.inference_mode(), self._precision:
            if self._monitor is not None:
                self._monitor.enabled = True
            try:
                output = self.ready.module(batch)
            finally:
                if self._monitor is not None:
                    self._monitor.enabled = False
        self._timer.stop(started)
        self.batches += 1
        self.rows += len(batch)
        return output

    def stats(self) -> list[LayerStats]:
        """Statistics over every batch so far; empty when they were not asked for."""
        if self._monitor is None:
            return []
        started = time.perf_counter()
        stats = self._monitor.stats()
        self._timer.add(time.perf_counter() - started)
        return stats
