"""Issue 3 figure: what full activation statistics cost on top of a forward pass.

Two models, each timed as a plain inference forward against the same forward of an identically
initialized copy with an ``ActivationMonitor`` on its activation layers (every statistic, a
64-bin histogram, every pass): the native kernel (the default on CPU), the pure-torch path
(what runs without a compiler, and on CUDA), and a naive hook of the common kind, one callback
per layer with a ``.item()`` per statistic and ``torch.histc``, so the gain is visible. On CUDA
(``--device cuda``) every timed call ends with ``torch.cuda.synchronize``; the target there is
the issue's 1.05x.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.harness import Table, compare, synchronized
from specbuilder.builder import SpecBuilder
from specbuilder.compiler import compile_spec
from specbuilder.stats import ActivationMonitor

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


def run(quick: bool, device: torch.device = torch.device("cpu")) -> list[Table]:
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
    return [table]
