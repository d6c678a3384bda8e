"""The training loop: ``train_events`` yields progress events, ``train`` returns the result.

The hot loop is what a person writes by hand, no more: data lives on the device, each epoch
is one seeded shuffle (a single gather), a batch is a slice, and the activation monitor is
enabled only on the steps it reports. The host waits on the device only to check the loss
for divergence (every step on CPU, where that costs nothing; every ``DIVERGENCE_CHECK`` steps
on CUDA, the step still named exactly) and once per epoch for validation. A run never raises
for what happens during training: divergence, cancellation and the time limit end it with a
status and a reason. Same spec, data, config and seed on CPU give bitwise-identical weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specbuilder.compiler import compile_spec
from specbuilder.datasets import DataLike, as_dataset
from specbuilder.devices import resolve_device
from specbuilder.kinds import resolve
from specbuilder.spec import ModelSpec, parse_spec
from specbuilder.stats import ActivationMonitor, LayerStats
from specbuilder.training.config import TrainConfig, parse_config, problem_at
from specbuilder.training.data import Predict, Prepared, choose_loss, prepare
from specbuilder.training.events import (
    CancelToken, EpochEvent, EpochMetrics, EvalMetrics, Event, FinishedEvent, StartedEvent, StatsEvent, Status,
)
from specbuilder.training.losses import LOSSES
from specbuilder.training.optimizers import OPTIMIZERS

DIVERGENCE_CHECK = 16
"""On CUDA, losses are checked for NaN/inf once per this many steps (one host sync each)."""
EVAL_CHUNK = 4096
"""Samples per forward pass when evaluating (or the batch size, if larger)."""

ModelLike = nn.Module | ModelSpec | Mapping[str, Any] | str | bytes | Path
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(eq=False)
class TrainResult:
    """What a run produced: the trained module, its history, final statistics and how it ended."""

    module: nn.Module
    history: list[EpochMetrics]
    stats: list[LayerStats]
    """Activation statistics of the final model over the validation set (the training set without one)."""
    final: EvalMetrics
    status: Status
    reason: str
    steps: int
    epochs: int
    """Epochs finished."""
    dataset: str
    seconds: float
    config: TrainConfig


def _place(model: ModelLike, config: TrainConfig) -> tuple[nn.Module, ModelSpec, torch.device]:
    """The module to train (compiled from a spec, or the given one), its spec and its device."""
    try:
        device = None if config.device == "auto" and isinstance(model, nn.Module) else resolve_device(config.device)
    except ValueError as error:
        raise problem_at("device", str(error)) from None
    if isinstance(model, nn.Module):
        spec = getattr(model, "spec", None)
        if not isinstance(spec, ModelSpec):
            raise TypeError("train() takes a spec or a module compiled by specbuilder (it carries .spec); this module has no spec")
        if device is None:
            device = next(model.parameters(), torch.empty(0)).device
        return model.to(device), spec, device
    spec = model if isinstance(model, ModelSpec) else parse_spec(model)  # a ModelSpec passed its caller's limits already
    return compile_spec(spec, config.style, device, seed=config.seed), spec, device


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global generators random layers (dropout) draw from; restore them afterwards."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


@torch.no_grad()
def evaluate(module: nn.Module, x: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor | None,
             predict: Predict | None, loss_fn: LossFn, chunk: int) -> tuple[float, float | None]:
    """Mean loss and accuracy (None without labels) over ``x`` in eval mode, with one host copy."""
    was_training = module.training
    module.eval()
    total = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.float64)
    for begin in range(0, len(x), chunk):
        out = module(x[begin:begin + chunk])
        total += loss_fn(out, targets[begin:begin + chunk]) * len(out)
        if labels is not None and predict is not None:
            correct += (predict(out) == labels[begin:begin + chunk]).sum()
    module.train(was_training)
    loss_sum, correct_sum = torch.stack([total, correct]).tolist()
    return loss_sum / len(x), None if labels is None else correct_sum / len(x)


def _final(module: nn.Module, data: Prepared, loss_fn: LossFn, chunk: int) -> tuple[EvalMetrics, list[LayerStats]]:
    """Metrics and activation statistics of the trained model over the validation (else training) set."""
    split = "validation" if len(data.x_val) else "training"
    x, targets, labels = (data.x_val, data.t_val, data.labels_val) if split == "validation" else (data.x_train, data.t_train, data.labels_train)
    with ActivationMonitor(module, grads=False) as monitor:
        loss, accuracy = evaluate(module, x, targets, labels, data.predict, loss_fn, chunk)
        stats = monitor.stats()
    return EvalMetrics(split=split, samples=len(x), loss=loss, accuracy=accuracy), stats


def _divergence(pending: list[torch.Tensor], losses: list[float], steps: int, epoch: int) -> str | None:
    """Read the pending step losses into ``losses``; a reason naming the first NaN/inf step, if any."""
    values = [pending[0].item()] if len(pending) == 1 else torch.stack(pending).tolist()
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            return f"loss became {value} at step {steps - len(values) + offset + 1} (epoch {epoch + 1}); lower lr or set grad_clip"
        losses.append(value)
    return None


@dataclass
class _Run:
    """One training run's fixed parts and its progress: what the hot loop touches."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    data: Prepared
    config: TrainConfig
    cancel: CancelToken | None
    deadline: float | None
    check_every: int
    monitor: ActivationMonitor | None = None
    """Set once its hooks are on; enabled only on the steps it reports."""
    steps: int = 0
    status: Status = "completed"
    reason: str = ""

    def stop_requested(self) -> bool:
        """Whether a cancel or the time limit ends the run now (setting status and reason)."""
        if self.cancel is not None and self.cancel.cancelled:
            self.status, self.reason = "cancelled", f"{self.cancel.reason} after {self.steps} steps"
        elif self.deadline is not None and time.monotonic() > self.deadline:
            self.status, self.reason = "cancelled", f"time limit of {self.config.max_seconds:g} s reached after {self.steps} steps"
        return self.status != "completed"

    def diverged(self, pending: list[torch.Tensor], losses: list[float], epoch: int) -> bool:
        """Check pending losses; on NaN/inf set status and reason."""
        reason = _divergence(pending, losses, self.steps, epoch)
        if reason is not None:
            self.status, self.reason = "diverged", reason
        pending.clear()
        return reason is not None

    def epoch(self, epoch: int, shuffle: torch.Generator, losses: list[float]) -> Iterator[StatsEvent]:
        """One pass over the shuffled training set; yields a stats event every ``stats_every`` steps."""
        config, data, monitor, batch = self.config, self.data, self.monitor, self.config.batch_size
        order = torch.randperm(len(data.x_train), generator=shuffle, device=data.x_train.device)
        xs, ts = data.x_train[order], data.t_train[order]
        parameters = [p for p in self.module.parameters() if p.requires_grad]
        pending: list[torch.Tensor] = []
        for begin in range(0, len(xs), batch):
            if self.stop_requested():
                return
            self.steps += 1
            monitored = monitor is not None and self.steps % config.stats_every == 0
            if monitored:
                monitor.enabled = True
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.module(xs[begin:begin + batch]), ts[begin:begin + batch])
            loss.backward()
            pending.append(loss.detach())
            diverged = len(pending) >= self.check_every and self.diverged(pending, losses, epoch)
            if monitored:
                monitor.enabled = False
                yield StatsEvent(step=self.steps, epoch=epoch + 1, layers=monitor.stats())
                monitor.reset()
            if diverged:
                return
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            self.optimizer.step()
        if pending:
            self.diverged(pending, losses, epoch)

    def epochs(self, shuffle: torch.Generator, chunk: int) -> Iterator[StatsEvent | EpochEvent]:
        """Every epoch, each closed by validation and an epoch event, until done or stopped."""
        data, config = self.data, self.config
        for epoch in range(config.epochs):
            started = time.perf_counter()
            lr = config.lr_at(epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            losses: list[float] = []
            yield from self.epoch(epoch, shuffle, losses)
            if self.status != "completed":
                return
            val_loss, accuracy = (
                evaluate(self.module, data.x_val, data.t_val, data.labels_val, data.predict, self.loss_fn, chunk)
                if len(data.x_val) else (None, None)
            )
            yield EpochEvent(metrics=EpochMetrics(
                epoch=epoch + 1, step=self.steps, loss=sum(losses) / len(losses), val_loss=val_loss, accuracy=accuracy,
                lr=lr, seconds=time.perf_counter() - started,
            ))
        self.reason = f"trained {config.epochs} epochs ({self.steps} steps)"


def train_events(model: ModelLike, data: DataLike, config: TrainConfig | Mapping[str, Any] | str | None = None, *,
                 cancel: CancelToken | None = None) -> Iterator[Event]:
    """Train, yielding ``started``, then ``epoch`` and ``stats`` events, and ``finished`` last.

    ``model``: a spec (any form ``parse_spec`` takes) or a module compiled by specbuilder
    (trained in place; with device "auto" it stays where it is). ``data``: a built-in dataset
    name, an ``.npz`` path, ``(x, y)`` arrays or tensors, or a ``Dataset``. Invalid input raises
    ``ConfigError``, ``SpecError`` or ``DataError`` before training starts; afterwards nothing
    raises: the finished event says how the run ended and carries the ``TrainResult``.
    """
    started = time.monotonic()
    config = parse_config(config)
    module, spec, device = _place(model, config)
    dataset = as_dataset(data, seed=config.seed)
    loss_spec = choose_loss(config.loss, dataset, spec)
    dtype = next(module.parameters(), torch.empty(0)).dtype
    prepared = prepare(dataset, spec, loss_spec, config.validation_split, config.seed, device, dtype)
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in config.optimizer.params().items()}
    run = _Run(
        module=module,
        optimizer=resolve(OPTIMIZERS[config.optimizer.type].cls)(module.parameters(), lr=config.lr, **options),
        loss_fn=partial(resolve(LOSSES[loss_spec.type].function), **loss_spec.params()),
        data=prepared, config=config, cancel=cancel, deadline=None if config.max_seconds is None else started + config.max_seconds,
        check_every=1 if device.type == "cpu" else DIVERGENCE_CHECK,
    )
    chunk = max(config.batch_size, EVAL_CHUNK)
    history: list[EpochMetrics] = []
    watch = ActivationMonitor(module, grads=True) if config.stats_every else nullcontext()
    with _seeded(config.seed, device), watch as monitor:
        if monitor is not None:
            monitor.enabled = False
        run.monitor = monitor
        yield StartedEvent(
            model=spec.name, parameters=spec.num_params, dataset=dataset.name, train_samples=len(prepared.x_train),
            val_samples=len(prepared.x_val), steps_per_epoch=math.ceil(len(prepared.x_train) / config.batch_size),
            loss=loss_spec.type, device=str(device), config=config,
        )
        module.train()
        for event in run.epochs(torch.Generator(device=device).manual_seed(config.seed), chunk):
            if isinstance(event, EpochEvent):
                history.append(event.metrics)
            yield event
    final, stats = _final(module, prepared, run.loss_fn, chunk)
    seconds = time.monotonic() - started
    result = TrainResult(module, history, stats, final, run.status, run.reason, run.steps, len(history), dataset.name, seconds, config)
    finished = FinishedEvent(status=run.status, reason=run.reason, steps=run.steps, epochs=len(history), seconds=seconds, final=final)
    finished._result = result
    yield finished


def train(model: ModelLike, data: DataLike, config: TrainConfig | Mapping[str, Any] | str | None = None, *,
          on_event: Callable[[Event], None] | None = None, cancel: CancelToken | None = None) -> TrainResult:
    """Train ``model`` on ``data``; ``on_event`` sees every event as it happens. See ``train_events``."""
    for event in train_events(model, data, config, cancel=cancel):
        if on_event is not None:
            on_event(event)
    assert isinstance(event, FinishedEvent)
    return event.result
