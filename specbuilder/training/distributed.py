"""Distributed data-parallel training on PyTorch's own engine: ``torch.distributed``, DDP, torchelastic.

``train()`` / ``train_events()`` with ``world_size`` > 1 come here (``launch_events``), and so
does ``specbuilder train --nproc N``. What happens:

- **Launch.** torchelastic's agent (``torch.distributed.launcher.api.elastic_launch``, what
  ``torchrun`` runs) starts the ranks on this node as spawned processes, after a c10d
  rendezvous (on a free 127.0.0.1 port for one node; at ``Launch.rdzv_endpoint`` for several,
  or torchrun's static rendezvous when ``node_rank`` is given). Each rank joins the process
  group (gloo on CPU, NCCL with one GPU per rank on CUDA) and wraps the module in
  ``DistributedDataParallel``; gradients are averaged across ranks in every backward pass.
- **Data.** Every rank holds the whole split (the same seeded split as one process). Each
  epoch a rank trains on its shard of the epoch's seeded permutation, the indices
  ``torch.utils.data.DistributedSampler(seed=config.seed)`` gives after ``set_epoch(epoch)``
  (padded by repetition so every rank takes the same number of steps), sliced from the device
  tensors as one process does. ``batch_size`` is per rank, as in DDP: a step consumes
  ``world_size * batch_size`` samples, and an epoch has ``ceil(ceil(n / world_size) / batch_size)`` steps.
- **Agreement.** Ranks decide everything together, so none waits forever in a collective:
  every ``DIVERGENCE_CHECK`` steps and at the end of each epoch (on CPU too: a collective is
  not free, as a host read is there) one all-reduce sums the pending step losses and a stop
  flag. The reported loss is the mean over ranks; NaN on any rank stops all, the step still
  named exactly; a cancel or the time limit (sent from the launching process) stops all at the
  same step, within ``DIVERGENCE_CHECK`` steps. Dropout draws from a stream seeded with ``seed + rank``.
- **Validation** after each epoch and the final pass are sharded: each rank evaluates its
  contiguous slice of the validation set, sums are all-reduced, so loss and accuracy are those
  of the whole set. **Statistics** (every ``stats_every`` steps and the final ones) are merged
  across ranks exactly (``specbuilder.stats.distributed``): they report the union of the
  ranks' batches, as one process monitoring all of them would.
- **Reporting.** Local rank 0 of each node sends its events to the launching process through
  a spawn-context queue as they happen; all ranks agree on every number in them. At the end it
  writes its weights (identical on every rank under DDP) to a file the launching process loads
  into the result's module. ``TrainResult.rank`` is the global rank that reported: only the
  node with rank 0 should save the model.
- **Failures** are never a hang: a rank that raises or dies makes the agent stop the others
  and the launching process raise ``DistributedError`` naming the rank and its error; a rank
  blocked on an unreachable peer gives up after ``Launch.collective_timeout``; nodes wait for
  each other at most ``Launch.join_timeout``.
"""

from __future__ import annotations

import io
import logging
import math
import multiprocessing
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.context import SpawnContext
from multiprocessing.queues import Queue
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from specbuilder.compiler import FunctionalModel, compile_spec
from specbuilder.datasets import DataLike, Dataset, as_dataset
from specbuilder.rng import RunStream
from specbuilder.spec import parse_spec
from specbuilder.evaluation import Evaluator, eval_mode
from specbuilder.stats import ActivationMonitor, LayerStats
from specbuilder.stats.distributed import all_merge_monitor, collective_device
from specbuilder.training.config import TrainConfig, parse_config, problem_at
from specbuilder.training.data import choose_loss, encode_targets, fit_inputs
from specbuilder.training.events import EVENTS, CancelToken, EpochEvent, EpochMetrics, Event, FinishedEvent, StartedEvent
from specbuilder.training.losses import LOSSES
from specbuilder.training.loop import DIVERGENCE_CHECK, ModelLike, Run, TrainResult, place_model

POLL_SECONDS = 0.05
"""How often the launching process, waiting for events, passes on a cancel or the time limit."""
REASON_BYTES = 1024
"""Room for a cancel reason shared with the ranks."""
SEED_SPACE = 2**63
"""Seeds are below this (``TrainConfig.seed``'s bound): ``seed + rank`` wraps around inside it."""
_SIGNAL_WARNING = "Failed to register signal handlers"


class _QuietSignalWarning(logging.Filter):
    """torchelastic warns that its agent, run in a thread here, cannot install signal handlers:
    this module stops the ranks itself (cancel, generator close, agent shutdown), so the warning
    only alarms; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_SIGNAL_WARNING)


logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_QuietSignalWarning())


class DistributedError(RuntimeError):
    """A rank of a distributed run failed (raised, was killed, lost its peers); the message names it."""


class LaunchError(ValueError):
    """A ``Launch`` setting is invalid: ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Launch:
    """Where a distributed run's ranks run and meet (torchrun's flags of the same names).

    One node (the default): ``world_size`` ranks here, meeting on a free 127.0.0.1 port.
    Several: run the same command on every node with ``nnodes`` and ``rdzv_endpoint`` (a
    ``HOST:PORT`` every node reaches; the node at HOST serves the rendezvous) and the same
    ``rdzv_id``; each node runs ``world_size / nnodes`` ranks and global ranks are assigned as
    nodes join. With ``node_rank`` it is torchrun's static rendezvous instead: node 0 is at
    HOST and holds global rank 0.
    """

    nnodes: int = 1
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str = "specbuilder"
    join_timeout: float = 600.0
    """Seconds a node waits at the rendezvous for the others."""
    collective_timeout: float = 600.0
    """Seconds a rank waits in one collective (a peer on another node died or hangs) before it fails."""

    def __post_init__(self) -> None:
        if self.nnodes < 1:
            raise LaunchError("nnodes", f"must be >= 1, got {self.nnodes}")
        if self.node_rank is not None and not 0 <= self.node_rank < self.nnodes:
            raise LaunchError("node_rank", f"must be in [0, {self.nnodes - 1}] (nnodes {self.nnodes}), got {self.node_rank}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise LaunchError("rdzv_endpoint", "is required with nnodes > 1: HOST:PORT of the rendezvous, the same on every node")
        if self.node_rank is not None and not self.rdzv_endpoint:
            raise LaunchError("rdzv_endpoint", "is required with node_rank (torchrun's static rendezvous): HOST:PORT of node 0")
        if self.rdzv_endpoint is not None:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise LaunchError("rdzv_endpoint", f"must be HOST:PORT with a port in [1, 65535], got {self.rdzv_endpoint!r}")
        for name in ("join_timeout", "collective_timeout"):
            if not getattr(self, name) > 0:
                raise LaunchError(name, f"must be > 0, got {getattr(self, name)}")

    def ranks_per_node(self, world_size: int) -> int:
        """Ranks this node runs; a ``ConfigError`` at ``world_size`` when the nodes cannot share it evenly."""
        if world_size % self.nnodes:
            raise problem_at("world_size", f"must be a multiple of nnodes ({self.nnodes}): every node runs world_size / nnodes ranks, got {world_size}")
        return world_size // self.nnodes

    def agent_config(self, nproc: int, logs: str) -> LaunchConfig:
        """torchelastic's ``LaunchConfig``: no restarts (a failed rank fails the run), logs in ``logs``."""
        static = self.node_rank is not None
        rendezvous: dict[str, Any] = {"rank": self.node_rank, "timeout": int(self.join_timeout)} if static else {"join_timeout": int(self.join_timeout)}
        return LaunchConfig(
            min_nodes=self.nnodes, max_nodes=self.nnodes, nproc_per_node=nproc, run_id=self.rdzv_id,
            rdzv_backend="static" if static else "c10d", rdzv_endpoint=self.rdzv_endpoint or "127.0.0.1:0",
            rdzv_configs=rendezvous, max_restarts=0, start_method="spawn", logs_specs=DefaultLogsSpecs(log_dir=logs),
        )


class SharedCancel(CancelToken):
    """A ``CancelToken`` the launching process and its ranks share: a spawn-context event and,
    beside it, the reason (its first ``REASON_BYTES`` - 1 bytes) under the array's own lock. The
    launching process cancels; ranks read it at each check. (It keeps none of the base class's
    threading parts: those cannot cross processes.)"""

    def __init__(self, context: SpawnContext) -> None:
        self._event = context.Event()
        self._text = context.Array("c", REASON_BYTES)
        self._lock = self._text.get_lock()

    def _keep(self, reason: str) -> None:
        self._text.value = reason.encode()[:REASON_BYTES - 1]

    @property
    def reason(self) -> str:
        return self._text.value.decode(errors="replace")


# -- in each rank -------------------------------------------------------------------------------


@dataclass
class RankRun(Run):
    """One rank's run: DDP around the module, its sampler shard, decisions and reports agreed
    with the other ranks (see the module docstring). ``step_module`` is the DDP wrapper the
    training step calls; evaluation and statistics use ``module``, the model itself."""

    rank: int = 0
    world: int = 1
    sampler: DistributedSampler[int] = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        device = self.device
        self.step_module = DistributedDataParallel(self.module, device_ids=[device.index] if device.type == "cuda" else None)
        self.sampler = DistributedSampler(range(len(self.data.x_train)), num_replicas=self.world, rank=self.rank, seed=self.config.seed)
        self.check_every = DIVERGENCE_CHECK
        if isinstance(self.random, RunStream):
            self.random = RunStream((self.config.seed + self.rank) % SEED_SPACE, device)

    def order(self, epoch: int, shuffle: torch.Generator) -> torch.Tensor:
        """This rank's shard of the epoch's permutation (``DistributedSampler``'s indices)."""
        self.sampler.set_epoch(epoch)
        return torch.tensor(list(self.sampler), dtype=torch.int64, device=self.device)

    def stop_requested(self) -> bool:
        return self.status != "completed"  # set only where every rank agrees: see diverged

    def diverged(self, pending: list[torch.Tensor], losses: list[float], epoch: int) -> bool:
        """One all-reduce: the step losses summed over ranks and whether any rank must stop."""
        wanted = Run.stop_requested(self)
        flag = torch.tensor([float(wanted)], dtype=torch.float64, device=pending[0].device)
        packed = torch.cat([torch.stack(pending).double(), flag])
        dist.all_reduce(packed)
        if not wanted and packed[-1].item() > 0 and not Run.stop_requested(self):
            self.status, self.reason = "cancelled", f"another rank was stopped (cancel or time limit) after {self.steps} steps"
        pending[:] = list((packed[:-1] / self.world).unbind())
        return super().diverged(pending, losses, epoch)

    def stats_of(self, monitor: ActivationMonitor) -> list[LayerStats]:
        """The statistics of every rank's monitor merged, as one monitor seeing all their batches would report."""
        all_merge_monitor(monitor)
        return monitor.stats()

    def assess(self, x: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor | None, *,
               statistics: bool = False) -> tuple[float, float | None, list[LayerStats]]:
        """``Run.assess`` over the whole of ``x``, each rank evaluating its contiguous slice; sums
        and statistics are merged across ranks."""
        n = len(x)
        begin, end = n * self.rank // self.world, n * (self.rank + 1) // self.world
        with eval_mode(self.module), Evaluator(self.module, statistics=statistics, amp=self.config.amp) as evaluator:
            sums = torch.zeros(2, dtype=torch.float64, device=x.device)
            if end > begin:
                outputs = evaluator.outputs(x[begin:end], self.eval_chunk)
                sums = self.totals(outputs, targets[begin:end], None if labels is None else labels[begin:end])
            stats = [] if evaluator.monitor is None else self.stats_of(evaluator.monitor)
        sums = sums.to(collective_device())
        dist.all_reduce(sums)
        loss_sum, correct = sums.tolist()
        return loss_sum / n, None if labels is None else round(correct) / n, stats


@dataclass
class _Job:
    """Everything a rank needs, pickled once into each spawned process."""

    spec: str
    """The spec as JSON (already validated by the launching process)."""
    style: str
    dtype: torch.dtype
    weights: bytes
    """The starting ``state_dict`` (``torch.save``), the same on every rank."""
    dataset: Dataset
    config: str
    """The ``TrainConfig`` as JSON."""
    backend: str
    timeout: float
    channel: Queue[Any]
    """A spawn-context queue to the launching process: event fields, then a ``_Final``."""
    cancel: SharedCancel
    folder: str


@dataclass
class _Final:
    """What local rank 0 sends last: how the run ended and where its weights are."""

    finished: dict[str, Any]
    stats: list[dict[str, Any]]
    weights: str
    rank: int


def _report(job: _Job, event: Event, world: int, rank: int, batch_size: int) -> None:
    """Send one event to the launching process (plain fields: the config stays there)."""
    if isinstance(event, FinishedEvent):
        result = event.result
        path = os.path.join(job.folder, "weights.pt")
        torch.save({name: value.detach().cpu() for name, value in result.module.state_dict().items()}, path)
        job.channel.put(_Final(event.model_dump(), [layer.model_dump() for layer in result.stats], path, rank))
        return
    fields = event.model_dump(exclude={"config"})
    if isinstance(event, StartedEvent):
        fields["steps_per_epoch"] = math.ceil(math.ceil(event.train_samples / world) / batch_size)
    job.channel.put(fields)


def _rank_main(job: _Job) -> None:
    """A rank's life: join the group, train with DDP, report (local rank 0), leave the group."""
    env = os.environ
    rank, local_rank, world, local_world = (int(env[name]) for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"))
    if "OMP_NUM_THREADS" not in env:  # the node's cores shared among its ranks, as torchrun does
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    device = torch.device("cuda", local_rank) if job.backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(job.backend, timeout=timedelta(seconds=job.timeout))
    try:
        module = compile_spec(parse_spec(job.spec, max_params=None), job.style, device, job.dtype, max_params=None, init=False)
        module.load_state_dict(torch.load(io.BytesIO(job.weights), weights_only=True))
        config = parse_config(job.config).model_copy(update={"device": str(device), "max_seconds": None})
        for event in RankRun.prepare(module, job.dataset, config, cancel=job.cancel, rank=rank, world=world).events():
            if local_rank == 0:
                _report(job, event, world, rank, config.batch_size)
    finally:
        dist.destroy_process_group()


# -- in the launching process -------------------------------------------------------------------


def _backend(config: TrainConfig, device: torch.device, nproc: int) -> str:
    """gloo on CPU; NCCL on CUDA, one GPU per rank (``cuda:LOCAL_RANK``)."""
    if device.type != "cuda":
        return "gloo"
    if config.device.startswith("cuda:"):
        raise problem_at("device", f"with world_size > 1 each rank takes its own GPU (cuda:LOCAL_RANK); set 'cuda' or 'auto', got {config.device!r}")
    if torch.cuda.device_count() < nproc:
        raise problem_at("world_size", f"{nproc} ranks on this node need {nproc} GPUs, it has {torch.cuda.device_count()}; "
                                       "use fewer ranks per node or device 'cpu'")
    return "nccl"


class _Agent(threading.Thread):
    """torchelastic's agent, run in a thread so the caller can read events while the ranks train."""

    def __init__(self, launch: Launch, nproc: int, job: _Job) -> None:
        super().__init__(name="specbuilder-ranks", daemon=True)
        self.config = launch.agent_config(nproc, os.path.join(job.folder, "logs"))
        self.job = job
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            elastic_launch(self.config, _rank_main)(self.job)
        except BaseException as error:  # noqa: BLE001 -- handed to the caller's thread, which raises it
            self.error = error


def _failure(error: BaseException) -> DistributedError:
    """A ``DistributedError`` saying which rank failed first and how."""
    if not isinstance(error, ChildFailedError):
        return DistributedError(f"the ranks could not be launched: {type(error).__name__}: {error}")
    rank, failure = error.get_first_failure()
    if failure.exitcode < 0:
        return DistributedError(f"rank {rank} was killed by {failure.signal_name()} (pid {failure.pid}); the other ranks were stopped")
    if not os.path.isfile(failure.error_file):
        return DistributedError(
            f"rank {rank} exited with code {failure.exitcode} before it could report an error; its output above says why "
            "(a script that starts a distributed run needs `if __name__ == \"__main__\":` around it: each rank is a "
            "spawned process that imports the script)")
    message = failure.message
    if isinstance(message, Mapping):
        message = message.get("message", "")
    return DistributedError(f"rank {rank} failed: {message}; the other ranks were stopped")


def _checked(model: ModelLike, data: DataLike, config: TrainConfig, launch: Launch) -> tuple[nn.Module, str, torch.device, Dataset, int]:
    """Everything one process would check before its first step, here, before any rank starts:
    the module to report into, the collective backend, the device, the dataset, ranks per node."""
    nproc = launch.ranks_per_node(config.world_size)
    module, spec, device = place_model(model, config)
    backend = _backend(config, device, nproc)
    dataset = as_dataset(data, seed=config.seed)
    loss = choose_loss(config.loss, dataset, spec)
    fit_inputs(dataset.x, spec)
    encode_targets(dataset, LOSSES[loss.type], spec)
    if not any(parameter.requires_grad for parameter in module.parameters()):
        raise problem_at("world_size", "the model has no trainable parameters, so there is nothing to train in parallel: use world_size 1")
    return module, backend, device, dataset, nproc


def _drain(channel: Queue[Any]) -> None:
    """Throw away whatever the ranks have sent and nobody will read."""
    try:
        while True:
            channel.get_nowait()
    except queue.Empty:
        pass


def launch_events(model: ModelLike, data: DataLike, config: TrainConfig | Mapping[str, Any] | str | None = None, *,
                  cancel: CancelToken | None = None, launch: Launch | None = None) -> Iterator[Event]:
    """``train_events`` over ``config.world_size`` ranks: events as rank 0 reports them, then
    ``finished`` with the ``TrainResult`` (its module holds the trained weights).

    Invalid input raises before any rank starts, as in one process; a failed rank raises
    ``DistributedError``. Closing the generator early stops the ranks.
    """
    started = time.monotonic()
    config = parse_config(config)
    launch = launch or Launch()
    module, backend, device, dataset, nproc = _checked(model, data, config, launch)
    deadline = None if config.max_seconds is None else started + config.max_seconds
    context = multiprocessing.get_context("spawn")
    shared = SharedCancel(context)
    channel = context.Queue()
    with tempfile.TemporaryDirectory(prefix="specbuilder-ranks-") as folder:
        weights = io.BytesIO()
        torch.save({name: value.detach().cpu() for name, value in module.state_dict().items()}, weights)
        job = _Job(
            spec=module.spec.to_json(indent=None), style="functional" if isinstance(module, FunctionalModel) else "sequential",
            dtype=next(module.parameters()).dtype, weights=weights.getvalue(), dataset=dataset, config=config.model_dump_json(),
            backend=backend, timeout=launch.collective_timeout, channel=channel, cancel=shared, folder=folder,
        )
        agent = _Agent(launch, nproc, job)
        agent.start()
        history: list[EpochMetrics] = []
        final: _Final | None = None
        try:
            while final is None:
                try:
                    item = channel.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    if not agent.is_alive() and channel.empty():
                        break
                else:
                    if isinstance(item, _Final):
                        final = item
                        break
                    event = EVENTS.validate_python({**item, "config": config} if item["type"] == "started" else item)
                    if isinstance(event, EpochEvent):
                        history.append(event.metrics)
                    yield event
                if cancel is not None and cancel.cancelled:
                    shared.cancel(cancel.reason)
                elif deadline is not None and time.monotonic() > deadline:
                    shared.cancel(f"time limit of {config.max_seconds:g} s reached")
        finally:
            if final is None:
                shared.cancel("the caller stopped reading the run's events")
            while agent.is_alive():  # drain, so no rank blocks flushing its queue on exit
                agent.join(POLL_SECONDS)
                _drain(channel)
            channel.close()
        if agent.error is not None:
            raise _failure(agent.error) from agent.error
        if final is None:
            raise DistributedError("the ranks exited without reporting a result")
        module.load_state_dict(torch.load(final.weights, map_location=device, weights_only=True))
    finished = FinishedEvent.model_validate({**final.finished, "seconds": time.monotonic() - started})
    finished._result = TrainResult(
        module=module, history=history, stats=[LayerStats.model_validate(layer) for layer in final.stats], final=finished.final,
        status=finished.status, reason=finished.reason, steps=finished.steps, epochs=finished.epochs, dataset=dataset.name,
        seconds=finished.seconds, config=config, rank=final.rank,
    )
    yield finished


__all__ = ["DistributedError", "Launch", "LaunchError", "RankRun", "SharedCancel", "launch_events"]
