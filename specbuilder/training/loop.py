"""The training loop in one process: ``Run`` and ``in_process``, the launcher ``train_events`` uses by default.

The hot loop is what a person writes by hand, no more: data lives on the device, each epoch
is one seeded shuffle (a single gather), a batch is a slice, and the activation monitor is
enabled only on the steps it reports. The host waits on the device only to check the loss
for divergence (every step on CPU, where that costs nothing; every ``DIVERGENCE_CHECK`` steps
on CUDA, the step still named exactly), once per epoch for validation and once per statistics
report. A run never raises for what happens during training: divergence, cancellation and the
time limit end it with a status and a reason. Same spec, data, config and seed on CPU give
bitwise-identical weights, also when runs train at once in threads: dropout draws from the
run's own random stream (``specbuilder.rng``).

``amp`` runs the forward under ``torch.autocast`` in bfloat16 or float16; the loss is taken
from the outputs widened back to the model's dtype, outside autocast (the same float32 loss
autocast would compute, and ``binary_cross_entropy``, which CUDA autocast refuses, works).
fp16 scales the loss with a ``GradScaler``: steps whose scaled gradients overflow are skipped
and the scale halves, which is not divergence (the loss read is the unscaled one); a scale
that falls below ``MIN_LOSS_SCALE`` means gradients beyond float16's range at every step, and
ends the run as diverged. On CUDA, ``GradScaler.step`` reads whether the step overflowed: one
host sync per fp16 step, which full precision and bf16 do not have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Self

import torch
from torch import nn

from specbuilder.compiler import compile_spec
from specbuilder.datasets import DataLike, as_dataset
from specbuilder.devices import AMP_DTYPES, amp_dtype, autocast, resolve_device
from specbuilder.errors import SpecError
from specbuilder.evaluation import EVAL_CHUNK, evaluate
from specbuilder.registry import resolve
from specbuilder.rng import RunStream, draws_random
from specbuilder.spec import ModelSpec, parse_spec
from specbuilder.stats import ActivationMonitor, LayerStats
from specbuilder.training.config import TrainConfig, problem_at
from specbuilder.training.data import Prepared, choose_loss, prepare
from specbuilder.training.events import (
    CancelToken, EpochEvent, EpochMetrics, EvalMetrics, Event, FinishedEvent, StartedEvent, StatsEvent, Status,
)
from specbuilder.training.losses import LOSSES
from specbuilder.training.optimizers import OPTIMIZERS
from specbuilder_wire.results import Problem

DIVERGENCE_CHECK = 16
"""On CUDA, losses are checked for NaN/inf once per this many steps (one host sync each)."""
MIN_LOSS_SCALE = 1.0
"""fp16: a loss scale below this (from 2**16, halved at every overflowing step) ends the run as diverged."""

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
    rank: int = 0
    """The rank that reported the run: 0, except on the other nodes of a multi-node run (only rank 0's node saves it)."""

    @property
    def keeps_weights(self) -> bool:
        """Whether the module is worth storing: not after a divergence (its weights are NaN or
        huge), nor after a cancel before the first step (they are the initialization, which the
        spec and seed make again, and storing them only takes room: a stream of such cancels
        could fill a disk)."""
        return self.status != "diverged" and not (self.status == "cancelled" and self.steps == 0)


def _smallest_batch(samples: int, size: int) -> int:
    """The smallest batch when ``samples`` are taken ``size`` at a time."""
    return samples % size or min(samples, size)


def _check_trainable(spec: ModelSpec, module: nn.Module, data: Prepared, config: TrainConfig) -> None:
    """Refuse, before anything runs, what torch would refuse mid-run: a model with no parameters for the
    optimizer, or a batch of one sample where batch norm needs two (training, or evaluating without running statistics)."""
    if next(module.parameters(), None) is None:
        raise SpecError([Problem("layers", "the model has no parameters, so training has nothing to change; add a layer with weights, such as linear", "no_parameters")])
    train = len(data.x_train)
    node = spec.needs_two_samples(training=True)
    if node is not None and _smallest_batch(train, config.batch_size) == 1:
        raise problem_at("batch_size", f"{node.path} ({node.layer.type}) needs at least 2 samples per training batch, but {train} training "
                                       f"samples in batches of {config.batch_size} leave one alone; pick another batch_size, or send more samples")
    node, evaluated = spec.needs_two_samples(), len(data.x_val) or train
    if node is not None and _smallest_batch(evaluated, max(config.batch_size, EVAL_CHUNK)) == 1:
        raise problem_at("validation_split", f"{node.path} ({node.layer.type}) keeps no running statistics, so it evaluates in batches of "
                                             f"at least 2 samples, but the {evaluated} it evaluates leave one alone; change validation_split, or send more samples")


def place_model(model: ModelLike, config: TrainConfig) -> tuple[nn.Module, ModelSpec, torch.device]:
    """The module to train (compiled from a spec, or the given one moved to ``config.device``), its
    spec and its device; with device "auto" a given module stays where it is. ``ConfigError`` at
    ``device`` for a device this machine lacks; ``TypeError`` for a module specbuilder did not compile."""
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


def widened(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Autocast's half-precision outputs in the model's ``dtype``, for the loss (others as they are)."""
    return out.to(dtype) if out.dtype != dtype and out.dtype in AMP_DTYPES.values() else out


def _divergence(pending: list[torch.Tensor], losses: list[float], steps: int, epoch: int) -> str | None:
    """Read the pending step losses into ``losses``; a reason naming the first NaN/inf step, if any."""
    values = [pending[0].item()] if len(pending) == 1 else torch.stack(pending).tolist()
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            return f"loss became {value} at step {steps - len(values) + offset + 1} (epoch {epoch + 1}); lower lr or set grad_clip"
        losses.append(value)
    return None


@dataclass
class Run:
    """One training run in this process: its fixed parts, its progress, and the steps that train it.

    ``Run.prepare`` builds one from what ``train`` takes and checks it; ``events`` trains,
    yielding the run's events. The methods between are the run's policy, each in one place: the
    epoch's sample ``order``, when a run must ``stop_requested``, whether it ``diverged``, the
    statistics of a monitor (``stats_of``), the loss and accuracy over a set (``assess``). A
    subclass changes what differs for it (``specbuilder.training.distributed.RankRun``: one rank of DDP).
    """

    module: nn.Module
    """The model being trained (compiled by specbuilder)."""
    spec: ModelSpec
    dataset: str
    """The dataset's name."""
    loss: str
    """The loss's name."""
    data: Prepared
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    cancel: CancelToken | None
    started: float
    """``time.monotonic()`` when the run was asked for: its time limit counts from here."""
    check_every: int
    """Steps between divergence checks (each one a host read of the pending losses)."""
    scaler: torch.amp.GradScaler | None = None
    """fp16 only: scales the loss so small gradients survive float16."""
    random: AbstractContextManager[object] = nullcontext()
    """Around each training forward: the run's own ``RunStream`` where the model draws random numbers (dropout)."""
    monitor: ActivationMonitor | None = None
    """Set by ``events`` once its hooks are on; enabled only on the steps it reports."""
    steps: int = 0
    status: Status = "completed"
    reason: str = ""
    step_module: nn.Module = field(init=False)
    """What a training step calls: ``module`` here; a subclass may wrap it (DDP does)."""

    def __post_init__(self) -> None:
        self.step_module = self.module

    @classmethod
    def prepare(cls, model: ModelLike, data: DataLike, config: TrainConfig, *, cancel: CancelToken | None = None,
                **fields: Any) -> Self:
        """A run of ``model`` on ``data`` (see ``train_events``), checked before anything runs:
        invalid input raises ``ConfigError``, ``SpecError`` or ``DataError`` here. ``fields``
        go to the constructor (a subclass's own)."""
        started = time.monotonic()
        module, spec, device = place_model(model, config)
        dataset = as_dataset(data, seed=config.seed)
        loss_spec = choose_loss(config.loss, dataset, spec)
        dtype = next(module.parameters(), torch.empty(0)).dtype
        prepared = prepare(dataset, spec, loss_spec, config.validation_split, config.seed, device, dtype)
        _check_trainable(spec, module, prepared, config)
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in config.optimizer.params().items()}
        return cls(
            module=module, spec=spec, dataset=dataset.name, loss=loss_spec.type, data=prepared,
            loss_fn=partial(resolve(LOSSES[loss_spec.type].function), **loss_spec.params()),
            optimizer=resolve(OPTIMIZERS[config.optimizer.type].cls)(module.parameters(), lr=config.lr, **options),
            config=config, cancel=cancel, started=started, check_every=1 if device.type == "cpu" else DIVERGENCE_CHECK,
            scaler=torch.amp.GradScaler(device.type) if config.amp == "fp16" else None,
            random=RunStream(config.seed, device) if draws_random(spec) else nullcontext(), **fields,
        )

    @property
    def device(self) -> torch.device:
        """Where the model and its data are."""
        return self.data.x_train.device

    @property
    def eval_chunk(self) -> int:
        """Samples per forward pass when evaluating: ``EVAL_CHUNK``, or the batch size if larger."""
        return max(self.config.batch_size, EVAL_CHUNK)

    def stop_requested(self) -> bool:
        """Whether a cancel or the time limit ends the run now (setting status and reason)."""
        limit = self.config.max_seconds
        if self.cancel is not None and self.cancel.cancelled:
            self.status, self.reason = "cancelled", f"{self.cancel.reason} after {self.steps} steps"
        elif limit is not None and time.monotonic() > self.started + limit:
            self.status, self.reason = "cancelled", f"time limit of {limit:g} s reached after {self.steps} steps"
        return self.status != "completed"

    def diverged(self, pending: list[torch.Tensor], losses: list[float], epoch: int) -> bool:
        """Check pending losses (and fp16's loss scale); on NaN/inf or a collapsed scale set status and reason."""
        reason = _divergence(pending, losses, self.steps, epoch)
        if reason is not None and self.config.amp == "fp16":
            reason += "; under amp 'fp16' values beyond ±65504 overflow: amp 'bf16' has float32's range"
        if reason is None and self.scaler is not None and (scale := self.scaler.get_scale()) < MIN_LOSS_SCALE:
            reason = (f"gradients overflowed float16 at every step until the loss scale fell to {scale:g} by step "
                      f"{self.steps} (epoch {epoch + 1}); lower lr, or use amp 'bf16' (float32's range)")
        if reason is not None:
            self.status, self.reason = "diverged", reason
        pending.clear()
        return reason is not None

    def order(self, epoch: int, shuffle: torch.Generator) -> torch.Tensor:
        """The epoch's sample order: one seeded permutation of the training set."""
        return torch.randperm(len(self.data.x_train), generator=shuffle, device=self.device)

    def stats_of(self, monitor: ActivationMonitor) -> list[LayerStats]:
        """What ``monitor`` has seen, as reported statistics."""
        return monitor.stats()

    @torch.no_grad()
    def totals(self, outputs: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Summed loss and correct predictions (0 without labels) over ``outputs``, as float64 on
        their device (no host sync); the loss is taken per ``eval_chunk`` in the model's dtype."""
        total = torch.zeros((), device=outputs.device, dtype=torch.float64)
        correct = torch.zeros((), device=outputs.device, dtype=torch.float64)
        predict, chunk = self.data.predict, self.eval_chunk
        for begin in range(0, len(outputs), chunk):
            out = widened(outputs[begin:begin + chunk], self.data.x_train.dtype)
            total += self.loss_fn(out, targets[begin:begin + chunk]) * len(out)
            if labels is not None and predict is not None:
                correct += (predict(out) == labels[begin:begin + chunk]).sum()
        return torch.stack([total, correct])

    def assess(self, x: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor | None, *,
               statistics: bool = False) -> tuple[float, float | None, list[LayerStats]]:
        """Mean loss, accuracy (None without labels) and, with ``statistics``, the activation
        statistics of the model over ``x`` in eval mode (``specbuilder.evaluation.evaluate``), with one host copy."""
        evaluation = evaluate(self.module, x, statistics=statistics, amp=self.config.amp, chunk=self.eval_chunk)
        loss_sum, correct = self.totals(evaluation.outputs, targets, labels).tolist()
        return loss_sum / len(x), None if labels is None else correct / len(x), evaluation.stats

    def validate(self) -> tuple[float | None, float | None]:
        """Validation loss and accuracy after an epoch; None without a validation set."""
        data = self.data
        if not len(data.x_val):
            return None, None
        loss, accuracy, _ = self.assess(data.x_val, data.t_val, data.labels_val)
        return loss, accuracy

    def final(self) -> tuple[EvalMetrics, list[LayerStats]]:
        """Metrics and activation statistics of the trained model over the validation (else training) set."""
        data = self.data
        split = "validation" if len(data.x_val) else "training"
        x, targets, labels = (data.x_val, data.t_val, data.labels_val) if split == "validation" else (data.x_train, data.t_train, data.labels_train)
        loss, accuracy, stats = self.assess(x, targets, labels, statistics=True)
        return EvalMetrics(split=split, samples=len(x), loss=loss, accuracy=accuracy), stats

    def epoch(self, epoch: int, shuffle: torch.Generator, losses: list[float]) -> Iterator[StatsEvent]:
        """One pass over the shuffled training set; yields a stats event every ``stats_every`` steps."""
        config, data, monitor, batch = self.config, self.data, self.monitor, self.config.batch_size
        order = self.order(epoch, shuffle)
        xs, ts = data.x_train[order], data.t_train[order]
        parameters = [p for p in self.module.parameters() if p.requires_grad]
        precision, scaler, dtype = autocast(xs.device, amp_dtype(config.amp)), self.scaler, xs.dtype
        one = torch.ones((), device=xs.device) if scaler is not None and monitor is not None else None
        pending: list[torch.Tensor] = []
        for begin in range(0, len(xs), batch):
            if self.stop_requested():
                return
            self.steps += 1
            monitored = monitor is not None and self.steps % config.stats_every == 0
            if monitored:
                monitor.enabled = True
                if one is not None:
                    monitor.grad_scale = scaler.scale(one)  # the scale this step's gradients carry, on the device
            self.optimizer.zero_grad(set_to_none=True)
            with precision, self.random:
                out = self.step_module(xs[begin:begin + batch])
            loss = self.loss_fn(widened(out, dtype), ts[begin:begin + batch])
            (loss if scaler is None else scaler.scale(loss)).backward()
            pending.append(loss.detach())
            diverged = len(pending) >= self.check_every and self.diverged(pending, losses, epoch)
            if monitored:
                monitor.enabled = False
                yield StatsEvent(step=self.steps, epoch=epoch + 1, layers=self.stats_of(monitor))
                monitor.reset()
            if diverged:
                return
            if config.grad_clip is not None:
                if scaler is not None:
                    scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            if scaler is None:
                self.optimizer.step()
            else:
                scaler.step(self.optimizer)  # skipped when a gradient overflowed
                scaler.update()
        if pending:
            self.diverged(pending, losses, epoch)

    def epochs(self, shuffle: torch.Generator) -> Iterator[StatsEvent | EpochEvent]:
        """Every epoch, each closed by validation and an epoch event, until done or stopped."""
        config = self.config
        for epoch in range(config.epochs):
            started = time.perf_counter()
            lr = config.lr_at(epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            losses: list[float] = []
            yield from self.epoch(epoch, shuffle, losses)
            if self.status != "completed":
                return
            val_loss, accuracy = self.validate()
            yield EpochEvent(metrics=EpochMetrics(
                epoch=epoch + 1, step=self.steps, loss=sum(losses) / len(losses), val_loss=val_loss, accuracy=accuracy,
                lr=lr, seconds=time.perf_counter() - started,
            ))
        self.reason = f"trained {config.epochs} epochs ({self.steps} steps)"

    def events(self) -> Iterator[Event]:
        """Train: ``started``, then ``epoch`` and ``stats`` events as they happen, ``finished`` last (with the ``TrainResult``)."""
        config, data, module, spec = self.config, self.data, self.module, self.spec
        history: list[EpochMetrics] = []
        watch = ActivationMonitor(module, grads=True) if config.stats_every else nullcontext()
        with watch as monitor:
            if monitor is not None:
                monitor.enabled = False
            self.monitor = monitor
            yield StartedEvent(
                model=spec.name, parameters=spec.num_params, dataset=self.dataset, train_samples=len(data.x_train),
                val_samples=len(data.x_val), steps_per_epoch=math.ceil(len(data.x_train) / config.batch_size),
                loss=self.loss, device=str(self.device), config=config,
            )
            module.train()
            for event in self.epochs(torch.Generator(device=self.device).manual_seed(config.seed)):
                if isinstance(event, EpochEvent):
                    history.append(event.metrics)
                yield event
        final, stats = self.final()
        seconds = time.monotonic() - self.started
        result = TrainResult(module, history, stats, final, self.status, self.reason, self.steps, len(history), self.dataset, seconds, config)
        finished = FinishedEvent(status=self.status, reason=self.reason, steps=self.steps, epochs=len(history), seconds=seconds, final=final)
        finished._result = result
        yield finished


def in_process(model: ModelLike, data: DataLike, config: TrainConfig, *, cancel: CancelToken | None = None) -> Iterator[Event]:
    """The launcher that trains in this process (see ``train_events``): ``Run.prepare``, then its events.
    A ``config`` with ``world_size`` > 1 is refused: that run takes ``distributed.launch_events``."""
    if config.world_size > 1:
        raise problem_at("world_size", f"is {config.world_size}, but this launcher trains in one process; "
                                       "launch it with specbuilder.training.distributed.launch_events")
    yield from Run.prepare(model, data, config, cancel=cancel).events()
