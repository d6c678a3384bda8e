"""Evaluation: a compiled model's outputs for a batch, with activation statistics when asked.

``evaluate(module, x, statistics=..., amp=...)`` is the whole of it for one batch: eval mode,
``torch.inference_mode()``, autocast with ``amp``, the batch in chunks of ``EVAL_CHUNK``, and
an ``ActivationMonitor`` over every chunk (statistics merge exactly across chunks). The CLI's
``eval``, the training loop's validation and final pass, and the server's evaluation pass
all run on it. ``Evaluator`` is the piece underneath, for callers that run batches one by one
(the server, batch by batch within a call, under a shared model's lock) or read the monitor
before its statistics (distributed training merges it across ranks first): its monitor sees
only the passes made through ``run``, so other callers of a shared module neither see it nor
feed it. An ``Evaluator`` per call is cheap: its monitor takes over the layers and accumulators
an earlier one on the same module left (``ActivationMonitor``), emptied in one copy.
``run_together`` makes one pass for several evaluators, each counting its own rows (the server's
merged batches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

import torch
from torch import nn

from specbuilder.devices import amp_dtype, autocast
from specbuilder.stats import ActivationMonitor, LayerStats
from specbuilder.stats.monitor import Layers

EVAL_CHUNK = 4096
"""Samples per forward pass when a batch is evaluated whole."""

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(eq=False)
class Evaluation:
    """What ``evaluate`` returns: the outputs, on the module's device, and the statistics asked for."""

    outputs: torch.Tensor
    """One row per sample; half precision under ``amp`` where the last layer computes in it."""
    stats: list[LayerStats]
    """Per monitored layer over the whole batch, in node order; empty without ``statistics``."""


class Evaluator:
    """Forward passes through ``module`` under ``torch.inference_mode()`` and autocast (``amp``),
    with an ``ActivationMonitor`` counting exactly these passes when ``statistics`` is on.

    The monitor's hooks go on here and come off at ``close()`` (or the end of a ``with``);
    between passes it is disabled, so a module shared with other callers may keep it attached.
    The module runs in whatever mode it is in: a caller wanting eval mode sets it (``eval_mode``; ``evaluate`` does).
    ``layers`` and ``bins`` are the monitor's (``ActivationMonitor``); a bad value raises ``ValueError`` here.
    """

    def __init__(self, module: nn.Module, *, statistics: bool = False, layers: Layers = "activations", bins: int = 64,
                 amp: str | None = None) -> None:
        self.module = module
        self._dtype = amp_dtype(amp)
        self.monitor: ActivationMonitor | None = None
        """The monitor when ``statistics`` is on: read or merge its state before ``stats()`` if needed."""
        if statistics:
            self.monitor = ActivationMonitor(module, layers=layers, bins=bins, grads=False)
            self.monitor.enabled = False

    def run(self, batch: torch.Tensor, forward: Forward | None = None) -> torch.Tensor:
        """The output for ``batch``, computed by ``forward`` (the module's own call by default; a
        caller may pass one that checks limits between layers) with the monitor counting it."""
        return run_together((self,), (None,), batch, forward)

    def outputs(self, x: torch.Tensor, chunk: int = EVAL_CHUNK) -> torch.Tensor:
        """``run`` over ``x`` in chunks of ``chunk`` samples, the outputs joined (``x`` must hold at least one)."""
        return torch.cat([self.run(x[begin:begin + chunk]) for begin in range(0, len(x), chunk)])

    def stats(self) -> list[LayerStats]:
        """Statistics over every pass so far (one host copy); empty without ``statistics``."""
        return [] if self.monitor is None else self.monitor.stats()

    def close(self) -> None:
        """Take the monitor's hooks off the module; ``stats()`` stays readable."""
        if self.monitor is not None:
            self.monitor.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


def run_together(evaluators: Sequence[Evaluator], parts: Sequence[slice | None], batch: torch.Tensor,
                 forward: Forward | None = None) -> torch.Tensor:
    """One forward over ``batch`` for several evaluators of one module and one ``amp``, each one's
    monitor counting only the rows of dimension 0 its part names (None: all of them): batches of
    several callers merged into one pass, their statistics kept apart, each equal to what its
    rows alone would give. ``forward`` as in ``Evaluator.run``."""
    first = evaluators[0]
    if any(other.module is not first.module or other._dtype != first._dtype for other in evaluators):
        raise ValueError("evaluators run together only over one module and with one amp")
    monitors = [(e.monitor, rows) for e, rows in zip(evaluators, parts, strict=True) if e.monitor is not None]
    with torch.inference_mode(), autocast(batch.device, first._dtype):
        for monitor, rows in monitors:
            monitor.rows, monitor.enabled = rows, True
        try:
            return (forward or first.module)(batch)
        finally:
            for monitor, _ in monitors:
                monitor.rows, monitor.enabled = None, False


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block, in the mode it had before after it."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def evaluate(module: nn.Module, x: torch.Tensor, *, statistics: bool = False, layers: Layers = "activations", bins: int = 64,
             amp: str | None = None, chunk: int = EVAL_CHUNK) -> Evaluation:
    """``module`` over the batch ``x`` (at least one sample, on the module's device) in eval
    mode, ``chunk`` samples per forward pass: its outputs and, with ``statistics``, the
    activation statistics of ``layers`` (``"activations"``, ``"all"`` or names) in ``bins``
    bins over the whole batch. ``amp`` (``"bf16"``, ``"fp16"``) runs the forward under
    autocast; statistics are taken in float32 either way. The module's mode is restored after.
    """
    with eval_mode(module), Evaluator(module, statistics=statistics, layers=layers, bins=bins, amp=amp) as evaluator:
        return Evaluation(evaluator.outputs(x, chunk), evaluator.stats())
