"""Issue 6 figure: ``train()`` over 2 DistributedDataParallel ranks against 1 process, same run.

Both sides train the same spirals MLP for the same epochs on the CPU, alternating call by call.
"Same global batch": one process takes 64 samples a step, two ranks 32 each (the same steps, the
same samples per step, as ``tests/test_distributed.py`` checks for accuracy); "same per-rank
batch": 64 samples each, as DDP is usually scaled (twice the samples per step, half the steps).
Two figures per case: the whole ``train()`` call (for 2 ranks: the torchelastic launch, two
spawned processes importing torch, rendezvous, training, teardown), and training throughput
in steps/s and samples/s from the epoch events alone (each epoch's time, its validation
included), which is what a longer run converges to. The one process runs with the benchmark's
thread count; each rank with cores / ranks threads, so both sides use the same cores.
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness import Table, compare
from specbuilder.datasets import load_dataset
from specbuilder.training import EpochEvent, Event, train

SPEC: dict[str, Any] = {
    "name": "spirals-mlp-2-64-64-2",
    "input_shape": [2],
    "layers": [{"type": "linear", "out_features": 64, "activation": "relu"}] * 2 + [{"type": "linear", "out_features": 2}],
}
BASE = {"epochs": 30, "batch_size": 64, "lr": 0.02, "lr_schedule": "cosine", "seed": 0, "device": "cpu"}


class Side:
    """One side of the comparison: a ``train()`` call that also keeps each call's training time."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.data = load_dataset("spirals", seed=0)
        self.training_seconds: list[float] = []
        self.steps = 0

    def __call__(self) -> None:
        seconds: list[float] = []

        def on_event(event: Event) -> None:
            if isinstance(event, EpochEvent):
                seconds.append(event.metrics.seconds)

        result = train(SPEC, self.data, self.config, on_event=on_event)
        if result.status != "completed":
            raise AssertionError(f"{self.config}: {result.status} ({result.reason})")
        self.training_seconds.append(sum(seconds))
        self.steps = result.steps

    @property
    def samples_per_step(self) -> int:
        return self.config["batch_size"] * self.config.get("world_size", 1)

    def rate(self, repeat: int) -> float:
        """Median training steps per second over the last ``repeat`` (timed) calls."""
        ordered = sorted(self.training_seconds[-repeat:])
        return self.steps / ordered[len(ordered) // 2]


def _case(table: Table, label: str, one: Side, two: Side, repeat: int, warmup: int) -> None:
    base, ours = compare(one, two, repeat=repeat, warmup=warmup)
    table.ratio(f"{label}: whole `train()` call ({one.steps} vs {two.steps} steps)", base, ours)
    rate_one, rate_two = one.rate(repeat), two.rate(repeat)
    table.figure(
        f"{label}: training steps/s (epoch events)",
        f"{rate_two:,.0f} steps/s, {rate_two * two.samples_per_step:,.0f} samples/s ({rate_two / rate_one:.2f}× the steps/s)",
        baseline=f"{rate_one:,.0f} steps/s, {rate_one * one.samples_per_step:,.0f} samples/s",
    )


def run(quick: bool) -> list[Table]:
    """Two cases, each 1 process vs 2 ranks, alternating."""
    repeat, warmup = (1, 0) if quick else (5, 1)
    table = Table(
        "Distributed training: 2 DDP ranks vs 1 process, CPU (issue 6)",
        note=(
            "Baseline column: `train()` in one process; specbuilder column: the same call with `world_size` 2 "
            "(gloo on loopback). Spirals MLP 2-64-64-2, 30 epochs, Adam, cosine schedule. Ratio = 2-rank time / "
            "1-process time of the whole call; the steps/s rows take training time from the epoch events (launch excluded)."
        ),
    )
    _case(table, "same global batch (1×64 vs 2×32)", Side(BASE), Side({**BASE, "world_size": 2, "batch_size": 32}), repeat, warmup)
    _case(table, "same per-rank batch (1×64 vs 2×64)", Side(BASE), Side({**BASE, "world_size": 2}), repeat, warmup)
    return [table]
