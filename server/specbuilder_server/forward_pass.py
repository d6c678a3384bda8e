"""One evaluation pass: batches through a ready model, outputs back, statistics over all of them.

A ``Pass`` serves one Evaluate call (one batch) or one StreamEvaluate call (many), on the core
``specbuilder.evaluation.Evaluator``: each batch runs under ``torch.inference_mode()`` and the
model's lock, layer by layer with the call's ``Budget`` checked before each layer; the statistics
monitor, when asked for, is attached for the whole pass but enabled only while this pass's own
batches run, so other calls on the same shared module neither see it nor feed it. The ``amp``
option runs each batch under autocast (statistics are still taken in float32). On CUDA nothing
here waits for the device: compute time is measured with events and read once, when the pass
reports it. ``Pass.run_merged`` runs one forward for several Evaluate calls' passes (``batching``):
each monitor counts its own rows, each pass is charged its rows' share of the time (on CUDA that
reading waits for the forward). ``WireBatch`` is a batch as a call sent it, and ``run_alone``
takes one through a pass and writes its output into the answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import TypeVar

import torch
from torch import nn

from specbuilder.devices import DeviceTimer
from specbuilder.evaluation import Evaluator, run_together
from specbuilder_wire.regions import RegionReader
from specbuilder.stats import LayerStats
from specbuilder_wire.v1 import tensor_pb2
from specbuilder_server.compute_budget import UNLIMITED, Budget, Check
from specbuilder_server.config import ServerConfig
from specbuilder_server.model_cache import Ready
from specbuilder_server.request_fields import Options
from specbuilder_server.torch_tensors import check_output_size, with_batch, write_tensor

T = TypeVar("T")


def forward(module: nn.Module, batch: torch.Tensor, budget: Check) -> torch.Tensor:
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

    @staticmethod
    def run_merged(passes: Sequence[Pass], parts: Sequence[slice], batch: torch.Tensor, budget: Check) -> torch.Tensor:
        """The output for ``batch``, one forward for ``passes`` (entered, over one model, with one amp),
        each owning the rows its part names: its statistics count those rows only, and its compute time
        grows by their share of the forward's. ``budget`` is checked between layers (``compute_budget.Shared``)."""
        ready = passes[0].ready
        timer = DeviceTimer(ready.device)
        started = timer.start()
        evaluators = [run._evaluator for run in passes]
        assert all(evaluators), "a Pass runs batches inside its with block"
        with ready.lock:
            output = run_together(evaluators, parts, batch, partial(forward, ready.module, budget=budget))
        timer.stop(started)
        seconds = timer.seconds
        for run, rows in zip(passes, parts, strict=True):
            count = rows.stop - rows.start
            run._timer.add(seconds * count / len(batch))
            run.batches += 1
            run.rows += count
        return output

    def stats(self) -> list[LayerStats]:
        """Statistics over every batch so far; empty when they were not asked for."""
        if self._evaluator is None or self._evaluator.monitor is None:
            return []
        started = time.perf_counter()
        stats = self._evaluator.stats()
        self._timer.add(time.perf_counter() - started)
        return stats


@dataclass(frozen=True)
class WireBatch:
    """A batch as a call sent it: the wire tensor, its elements when they were cut from the request's
    bytes (``raw_handlers.Received``; None: in the tensor or in shared memory), where shared memory is
    read from (None: refused), and the field it came in, for errors."""

    tensor: tensor_pb2.Tensor
    data: memoryview | None
    regions: RegionReader | None
    path: str

    @property
    def rows(self) -> int:
        """The batch's first dimension as sent (checked against the spec with the data, by ``use``)."""
        return max(self.tensor.shape[0], 0) if self.tensor.shape else 0

    def use(self, ready: Ready, use: Callable[[torch.Tensor], T], max_elements: int, device: torch.device | None = None) -> T:
        """``use(batch)`` for the batch checked against ``ready``'s spec and ``max_elements``, in the model's dtype
        on ``device`` (the model's by default; ``torch_tensors.with_batch``: nothing derived from it may outlive ``use``)."""
        return with_batch(self.tensor, self.path, ready.spec, use, device=device or ready.device, dtype=ready.dtype,
                          max_elements=max_elements, regions=self.regions, data=self.data)


def write_output(output: torch.Tensor, run: Pass, into: tensor_pb2.Tensor, config: ServerConfig, path: str) -> None:
    """``output`` written into the answer's tensor ``into``, unless ``run`` skips outputs; RESOURCE_EXHAUSTED
    when it alone is over the message limit."""
    if not run.options.skip_output:
        check_output_size(output, config.max_message_bytes, path)
        write_tensor(output, into)


def run_alone(run: Pass, batch: WireBatch, into: tensor_pb2.Tensor, budget: Budget, config: ServerConfig,
              starting: Callable[[int], object] | None = None) -> None:
    """One batch through ``run`` in a forward of its own, its output written into ``into``; ``starting`` is told
    the batch's rows once they passed their checks, as the forward starts. Runs in a compute lane."""

    def forward(x: torch.Tensor) -> None:
        if starting is not None:
            starting(len(x))
        write_output(run.run(x, budget), run, into, config, batch.path)

    batch.use(run.ready, forward, config.max_batch_elements)
