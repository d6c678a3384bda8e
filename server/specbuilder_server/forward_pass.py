"""One evaluation pass: batches through a ready model, outputs back, statistics over all of them.

A ``Pass`` serves one Evaluate call (one batch) or one StreamEvaluate call (many), on the core
``specbuilder.evaluation.Evaluator``: each batch runs under ``torch.inference_mode()`` and the
model's lock, layer by layer with the call's ``Budget`` checked before each layer; the statistics
monitor, when asked for, is attached for the whole pass but enabled only while this pass's own
batches run, so other calls on the same shared module neither see it nor feed it. The ``amp``
option runs each batch under autocast (statistics are still taken in float32). On CUDA nothing
here waits for the device: compute time is measured with events and read once, when the pass
reports it.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from functools import partial
from types import TracebackType

import torch
from torch import nn

from specbuilder.devices import DeviceTimer
from specbuilder.evaluation import Evaluator
from specbuilder.stats import LayerStats
from specbuilder_server.compute_budget import UNLIMITED, Budget
from specbuilder_server.model_cache import Ready
from specbuilder_server.request_fields import Options


def forward(module: nn.Module, batch: torch.Tensor, budget: Budget) -> torch.Tensor:
    """``module(batch)``, layer by layer for a plain ``nn.Sequential`` so ``budget`` is checked before each layer."""
    budget.check()
    if type(module) is not nn.Sequential or module._forward_hooks or module._forward_pre_hooks:
        return module(batch)
    for layer in module:
        batch = layer(batch)
        budget.check()
    return batch


class Pass:
    """Batches through ``ready`` with ``options``; ``seconds`` counts the time spent computing.

    The core ``Evaluator`` runs each batch (inference mode, autocast, the monitor counting only
    this pass's batches); here it is attached, run and closed under the model's lock, and its
    forward checks the call's ``Budget`` between layers. ``run`` may be called from several threads
    at once (a stream's batches started ahead, in different lanes): the lock takes them in turn.
    """

    def __init__(self, ready: Ready, options: Options) -> None:
        self.ready = ready
        self.options = options
        self._timer = DeviceTimer(ready.device)
        self.batches = 0
        self.rows = 0
        self._evaluator: Evaluator | None = None

    def __enter__(self) -> Pass:
        layers = self.options.layers
        with self.ready.lock if layers is not None else nullcontext():  # hooks must not change while another call's forward runs
            self._evaluator = Evaluator(self.ready.module, statistics=layers is not None, layers=layers or "activations",
                                        bins=self.options.bins, amp=self.options.amp)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self._evaluator is not None and self._evaluator.monitor is not None:
            with self.ready.lock:
                self._evaluator.close()

    @property
    def seconds(self) -> float:
        """Time spent computing so far (on CUDA, reading it waits for the batches queued)."""
        return self._timer.seconds

    def run(self, batch: torch.Tensor, budget: Budget = UNLIMITED) -> torch.Tensor:
        """The model's output for ``batch`` (on the model's device, possibly still being computed
        there); statistics accumulate. ``Stopped`` when ``budget`` runs out between layers."""
        assert self._evaluator is not None, "a Pass runs batches inside its with block"
        with self.ready.lock:  # a stream's batches may run on two compute threads at once (one per lane): one at a time here
            started = self._timer.start()
            output = self._evaluator.run(batch, partial(forward, self.ready.module, budget=budget))
            self._timer.stop(started)
            self.batches += 1
            self.rows += len(batch)
        return output

    def stats(self) -> list[LayerStats]:
        """Statistics over every batch so far; empty when they were not asked for."""
        if self._evaluator is None or self._evaluator.monitor is None:
            return []
        started = time.perf_counter()
        stats = self._evaluator.stats()
        self._timer.add(time.perf_counter() - started)
        return stats
