"""Issue 3 figure: ``train()`` steps per second against a minimal hand-written PyTorch loop.

Both sides train the same compiled MLP (same seed) with the same optimizer and batch size on
the same samples, a whole run per timed call, and produce the same results. The hand-written
loop is what a person types: a seeded permutation per epoch, index the batch, zero_grad /
forward / loss / backward / step, validation loss and accuracy after each epoch, and a final
monitored pass over the validation set. ``train()`` is timed as users call it, start to
finish: it also checks, encodes and splits the data, moves it into place and watches every
step for divergence, cancellation and the time limit. "Statistics every 10 steps" gives both
sides the same ``ActivationMonitor``, enabled on every tenth step only. Ratios are of run
time, so the steps/s ratio is 1 / ratio. On CUDA (``--device cuda``) the loop's data lives on
the device, its permutation is drawn there, and both sides end each timed run with
``torch.cuda.synchronize``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import Table, compare, synchronized
from specbuilder.compiler import compile_spec
from specbuilder.datasets import Dataset, load_dataset
from specbuilder.stats import ActivationMonitor
from specbuilder.training import train
from specbuilder.training.data import split_indices

TARGET = 1 / 0.95
"""At least 0.95x the hand-written loop's steps per second."""
STATS_EVERY = 10
SEED = 0


Split = tuple[torch.Tensor, torch.Tensor]


def tensors(data: Dataset, rows: np.ndarray) -> Split:
    """``(x, y)`` of the given rows."""
    return torch.from_numpy(np.ascontiguousarray(data.x[rows])), torch.from_numpy(np.ascontiguousarray(data.y[rows]))


def mlp(inputs: int, width: int, outputs: int) -> dict[str, Any]:
    """Two hidden ReLU layers."""
    return {
        "input_shape": [inputs],
        "layers": [{"type": "linear", "out_features": width, "activation": "relu"}] * 2 + [{"type": "linear", "out_features": outputs}],
    }


def hand_loop(spec: dict[str, Any], train_xy: Split, val_xy: Split, epochs: int, batch: int, stats_every: int,
              device: torch.device) -> Callable[[], int]:
    """The minimal loop doing what ``train()`` reports: validation loss and accuracy after every
    epoch and a final monitored pass over the validation set. Returns the number of steps taken."""
    (x, y), (x_val, y_val) = ((part.to(device) for part in pair) for pair in (train_xy, val_xy))

    def validate(model: torch.nn.Module) -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            result = F.cross_entropy(out, y_val).item(), (out.argmax(1) == y_val).float().mean().item()
        model.train()
        return result

    def run() -> int:
        model = compile_spec(spec, device=device, seed=SEED)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        generator = torch.Generator(device=device).manual_seed(SEED)
        monitor = ActivationMonitor(model, grads=True) if stats_every else None
        step = 0
        with monitor or nullcontext():
            if monitor is not None:
                monitor.enabled = False
            for _ in range(epochs):
                order = torch.randperm(len(x), generator=generator, device=device)
                for begin in range(0, len(x), batch):
                    index = order[begin:begin + batch]
                    step += 1
                    watched = monitor is not None and step % stats_every == 0
                    if watched:
                        monitor.enabled = True
                    optimizer.zero_grad()
                    loss = F.cross_entropy(model(x[index]), y[index])
                    loss.backward()
                    if watched:
                        monitor.enabled = False
                        monitor.stats()
                        monitor.reset()
                    optimizer.step()
                validate(model)
        with ActivationMonitor(model, grads=False) as final:
            validate(model)
            final.stats()
        return step

    return run


def run(quick: bool, device: torch.device = torch.device("cpu")) -> list[Table]:
    """Run-time ratios, with statistics off and every 10 steps, on two models."""
    repeat, warmup = (3, 1) if quick else (11, 2)
    where = "CUDA" if device.type == "cuda" else "CPU"
    table = Table(
        "Training loop (issue 3)" if device.type == "cpu" else f"Training loop on {where} (issue 6)",
        note=(
            f"One timed call is a whole run on {where} (Adam, batch 64, validation split 0.2, 8 epochs). Plain side: "
            "the minimal hand-written loop over the same samples, validating after each epoch, with the same "
            "`ActivationMonitor` every 10th step in the statistics rows and for the final pass. Ratio = `train()` time / loop time "
            f"(target ≤ {TARGET:.3f}, i.e. ≥ 0.95× the loop's steps/s)."
        ),
    )
    cases = [("spirals MLP 2-64-64-2", "spirals", 2000, 64, 2, 8), ("digits MLP 64-128-128-10", "digits", 1797, 128, 10, 8)]
    for label, name, n, width, outputs, epochs in cases:
        data = load_dataset(name, n=n, seed=SEED)
        spec = mlp(data.x.shape[1], width, outputs)
        train_rows, val_rows = split_indices(len(data), 0.2, SEED)
        for stats_every in (0, STATS_EVERY):
            config = {"epochs": epochs, "batch_size": 64, "lr": 0.01, "seed": SEED, "device": str(device), "stats_every": stats_every}
            hand = hand_loop(spec, tensors(data, train_rows), tensors(data, val_rows), epochs, 64, stats_every, device)
            steps = hand()
            ours = train(spec, data, config)
            if ours.steps != steps or ours.status != "completed":
                raise AssertionError(f"{label}: train() took {ours.steps} steps ({ours.status}), the loop {steps}")
            base, mine = compare(synchronized(hand, device), synchronized(lambda: train(spec, data, config), device),
                                 repeat=repeat, warmup=warmup)
            what = f"statistics every {stats_every} steps" if stats_every else "no statistics"
            ratio = table.ratio(f"{label}, {steps} steps, {what}", base, mine, TARGET)
            table.figure(
                f"{label}, {what}: steps/s",
                f"{steps / mine.median_ns * 1e9:,.0f} ({1 / ratio:.2f}× the loop)",
                baseline=f"{steps / base.median_ns * 1e9:,.0f}",
            )
    return [table]
