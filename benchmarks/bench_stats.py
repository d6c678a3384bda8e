"""Issue 3 figure: what full activation statistics cost on top of a forward pass.

Two models, each timed as a plain inference forward against the same forward of an identically
initialized copy with an ``ActivationMonitor`` on its activation layers (every statistic, a
64-bin histogram, every pass): the native kernel (the default on CPU), the pure-torch path
(what runs without a compiler, and on CUDA), and a naive hook of the common kind, one callback
per layer with a ``.item()`` per statistic and ``torch.histc``, so the gain is visible. On CUDA
(``--device cuda``) every timed call ends with ``torch.cuda.synchronize``; the target there is
the issue's 1.05x.

Issue 16 figures (``per_batch``, ``evaluate``): what statistics cost when they are read per batch.
In process, against the plain forward: a monitor attached, the forward and ``stats()`` for every
batch (``with ActivationMonitor(m): m(x)``, as a caller with one batch at a time writes it), a
monitor kept attached with ``stats()`` and ``reset()`` per batch, and the forward alone with the
monitor kept attached; two floors, the same attaching and reading with nothing of specbuilder in
them and one torch read of every monitored output; then the server's own pass (``specbuilder_server.evaluation.Pass``: the
core ``Evaluator`` under the model's lock, the statistics turned into their protobuf messages)
with statistics against the same pass without. Over gRPC, an Evaluate call with
``statistics=True`` against the same call without, on one ``specbuilder serve`` in its own
process (this process's thread count), the spec sent with every call.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.harness import Table, compare, synchronized
from specbuilder.builder import SpecBuilder
from specbuilder.compiler import compile_spec
from specbuilder.demo.server import serve_subprocess
from specbuilder.stats import ActivationMonitor, LayerStats
from specbuilder.stats.monitor import select_nodes
from specbuilder_client import Client
from specbuilder_server.forward_pass import Pass
from specbuilder_server.model_cache import Ready
from specbuilder_server.request_fields import Options

MLP: dict[str, Any] = (
    SpecBuilder([784], name="mlp-784-256-256-10").linear(256, activation="relu").linear(256, activation="relu").linear(10).to_dict()
)
CNN: dict[str, Any] = (
    SpecBuilder([1, 28, 28], name="small-cnn").conv2d(16, 3, activation="relu").conv2d(32, 3, activation="relu")
    .max_pool2d(2).flatten().linear(10).to_dict()
)
CASES = ((MLP, 1024), (CNN, 256))
TARGET = 1.10
GPU_TARGET = 1.05


def naive_hooks(model: nn.Module, record: list[dict[str, float]]) -> list[torch.utils.hooks.RemovableHandle]:
    """The statistics hook as commonly written: a host sync for every number, ``torch.histc``."""
    def hook(_module: nn.Module, _args: tuple[Any, ...], y: torch.Tensor) -> None:
        y = y.detach()
        units = y.transpose(0, 1).reshape(y.shape[1], -1)
        record.append({
            "mean": y.mean().item(), "std": y.std().item(), "min": y.min().item(), "max": y.max().item(),
            "zero": (y == 0).float().mean().item(), "nan": torch.isnan(y).sum().item(),
            "dead": (units.amax(dim=1) <= 0).float().mean().item(),
            "hist": torch.histc(y, bins=64, min=0, max=10).sum().item(),
        })

    return [module.register_forward_hook(hook) for module in model if isinstance(module, nn.ReLU)]


def _forward(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return synchronized(run, x.device)


def overhead(quick: bool, device: torch.device) -> Table:
    """The issue 3 table: a monitor kept attached, each backend and a naive hook, against the plain forward."""
    repeat, budget = (20, 3.0) if quick else (150, 30.0)
    cuda = device.type == "cuda"
    table = Table(
        f"Activation statistics: forward + ActivationMonitor vs plain forward ({'CUDA' if cuda else 'CPU'}, inference)",
        note="Every pass adds count, mean/std, min/max, NaN/inf/zero counts, saturation, dead units and a "
             "64-bin histogram of each activation layer to device accumulators; no host sync per pass. "
             + ("The native kernel is CPU-only: on CUDA the torch path runs, accumulators on the device."
                if cuda else "Preliminary figures on a shared 2-core machine."),
    )
    for spec, batch in CASES:
        x = torch.randn(batch, *spec["input_shape"], generator=torch.Generator().manual_seed(0)).to(device)
        plain = compile_spec(spec, device=device, seed=0).eval()
        label = f"{spec['name']}, batch {batch}"
        for backend in ("torch",) if cuda else ("native", "torch"):
            model = compile_spec(spec, device=device, seed=0).eval()
            with ActivationMonitor(model, backend=backend):
                base, ours = compare(_forward(plain, x), _forward(model, x), repeat=repeat, warmup=5, budget_s=budget)
            target = GPU_TARGET if cuda else TARGET if backend == "native" else None
            table.ratio(f"{label}: monitor ({backend} path)", base, ours, target=target)
        model = compile_spec(spec, device=device, seed=0).eval()
        record: list[dict[str, float]] = []
        handles = naive_hooks(model, record)
        base, ours = compare(_forward(plain, x), _forward(model, x), repeat=repeat, warmup=5, budget_s=budget)
        for handle in handles:
            handle.remove()
        table.ratio(f"{label}: naive hook (.item() per statistic, histc)", base, ours)
    return table


def _per_batch(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """A monitor attached for the batch, the forward, the statistics read."""
    def run() -> object:
        with torch.inference_mode(), ActivationMonitor(model) as monitor:
            model(x)
        return monitor.stats()

    return run


def _kept(model: nn.Module, x: torch.Tensor, read: bool) -> Callable[[], object]:
    """The forward with one monitor kept attached; with ``read``, its statistics read and its window reset."""
    monitor = ActivationMonitor(model)

    def run() -> object:
        with torch.inference_mode():
            model(x)
        if not read:
            return monitor
        stats = monitor.stats()
        monitor.reset()
        return stats

    return run


def _monitored(model: nn.Module) -> list[nn.Module]:
    """The modules a default monitor watches (the activation layers)."""
    return [model.get_submodule(node.name) for node in select_nodes(model.spec, "activations")]


def _floor_of_reading(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """Per batch, with nothing of specbuilder in it: a no-op forward hook on every monitored layer attached
    and removed around the forward, and results of the same shape validated by pydantic from ready values."""
    with torch.inference_mode(), ActivationMonitor(model) as monitor:
        model(x)
    values = [stats.model_dump() for stats in monitor.stats()]
    modules = _monitored(model)

    def run() -> object:
        handles = [module.register_forward_hook(lambda *_: None) for module in modules]
        with torch.inference_mode():
            model(x)
        for handle in handles:
            handle.remove()
        return [LayerStats.model_validate(value) for value in values]

    return run


def _read_once(_module: nn.Module, _args: tuple[Any, ...], y: torch.Tensor) -> None:
    y.sum()


def _floor_of_statistics(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """The forward with every monitored output read once by torch (``y.sum()`` in a hook kept attached)."""
    for module in _monitored(model):
        module.register_forward_hook(_read_once)
    return _forward(model, x)


def _pass(ready: Ready, x: torch.Tensor, layers: str | None) -> Callable[[], object]:
    """The server's pass over one batch, its statistics (with ``layers``) as protobuf messages."""
    options = Options(skip_output=False, layers=layers, bins=64)

    def run() -> object:
        with Pass(ready, options) as one:
            one.run(x)
            return [layer.to_proto() for layer in one.stats()]

    return run


def per_batch(quick: bool, device: torch.device) -> Table:
    """Issue 16, in process: statistics read per batch against the plain forward; the server's pass with and without."""
    repeat, budget = (20, 3.0) if quick else (150, 30.0)
    table = Table(
        f"Statistics per batch (issue 16, {'CUDA' if device.type == 'cuda' else 'CPU'}, in process)",
        note="Plain side: the forward under `inference_mode`. A monitor per batch: `with ActivationMonitor(m): m(x)`, then "
             "`stats()`. Kept attached: one monitor for the whole run, `stats()` and `reset()` after every forward. "
             "The floors: what attaching and reading cost with nothing of ours in them (no-op torch hooks on the "
             "same layers attached and removed per batch, pydantic validating the same results from ready values), "
             "and what reading every monitored output once costs (`y.sum()` in a hook). "
             "The server's pass: `Pass` with statistics (every activation layer, 64 bins, turned into protobuf) "
             "against the same `Pass` without. Each pair timed alternately, call by call; ratio of medians. "
             "Under the process's malloc settings: glibc's defaults in a process of its own, the client's "
             "(`specbuilder_wire.heap.keep_large_buffers`) once a client has sent a tensor in it.",
    )
    for spec, batch in CASES:
        x = torch.randn(batch, *spec["input_shape"], generator=torch.Generator().manual_seed(0)).to(device)
        plain = _forward(compile_spec(spec, device=device, seed=0).eval(), x)
        label = f"{spec['name']}, batch {batch}"
        for name, ours, target in (
            ("a monitor attached, forward, `stats()`, per batch", _per_batch(compile_spec(spec, device=device, seed=0).eval(), x), TARGET),
            ("kept attached: forward, `stats()`, `reset()`, per batch", _kept(compile_spec(spec, device=device, seed=0).eval(), x, True), TARGET),
            ("kept attached: forward only", _kept(compile_spec(spec, device=device, seed=0).eval(), x, False), None),
            ("floor of attaching and reading: no-op hooks attached and removed, the same results validated by pydantic",
             _floor_of_reading(compile_spec(spec, device=device, seed=0).eval(), x), None),
            ("floor of the statistics: each monitored output read once (`y.sum()` in a hook)",
             _floor_of_statistics(compile_spec(spec, device=device, seed=0).eval(), x), None),
        ):
            base, timed = compare(plain, synchronized(ours, device), repeat=repeat, warmup=5, budget_s=budget)
            table.ratio(f"{label}: {name}", base, timed, target=target)
        ready = Ready.of(compile_spec(spec, device=device, seed=0).eval(), device)
        base, timed = compare(synchronized(_pass(ready, x, None), device), synchronized(_pass(ready, x, "activations"), device),
                              repeat=repeat, warmup=5, budget_s=budget)
        table.ratio(f"{label}: the server's pass, statistics vs none", base, timed, target=TARGET)
    return table


def evaluate(quick: bool, device: torch.device) -> Table:
    """Issue 16, over gRPC: Evaluate with statistics against the same call without, one server in its own process."""
    repeat, budget = (10, 5.0) if quick else (150, 40.0)
    table = Table(
        f"Evaluate with statistics vs without (issue 16, gRPC, server on {'CUDA' if device.type == 'cuda' else 'CPU'})",
        note="One `specbuilder serve` in its own process (this process's thread count); `Client.evaluate(spec, x)` "
             "against `Client.evaluate(spec, x, statistics=True)` (every activation layer, 64 bins, decoded by the "
             "client), timed alternately, call by call; ratio of medians.",
    )
    with tempfile.TemporaryDirectory(prefix="bench-stats-") as folder, \
            serve_subprocess(Path(folder) / "store", "--device", str(device), env={"OMP_NUM_THREADS": str(torch.get_num_threads())}) as server, \
            Client(server.address) as client:
        for spec, batch in CASES:
            x = np.random.default_rng(0).standard_normal((batch, *spec["input_shape"]), dtype=np.float32)
            assert client.evaluate(spec, x, statistics=True).stats, "statistics come back"
            base, ours = compare(lambda: client.evaluate(spec, x), lambda: client.evaluate(spec, x, statistics=True),
                                 repeat=repeat, warmup=5, budget_s=budget)
            table.ratio(f"{spec['name']}, batch {batch}: Evaluate, statistics vs none", base, ours, target=TARGET)
    return table


def run(quick: bool, device: torch.device = torch.device("cpu")) -> list[Table]:
    return [overhead(quick, device), per_batch(quick, device), evaluate(quick, device)]
