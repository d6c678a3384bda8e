"""Issue 2 figures: what validating and compiling a spec costs over building the model by hand.

Two models, a 20-layer 256-wide MLP and a small MNIST-sized CNN, each compiled from its spec
dict (``compile_spec`` validates, infers shapes and builds) against the same ``nn.Sequential``
written by hand, in the same run: once with weight initialization, once without
(``init=False`` against ``torch.device("meta")`` + ``to_empty``, the way weights about to be
loaded are built). Then validation alone (``parse_spec``), and how fast and how cheaply a
30-billion-parameter spec is refused: before anything is allocated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.harness import Table, compare, format_ns, measure, peak_rss_bytes, rss_bytes
from specbuilder.builder import SpecBuilder
from specbuilder.compiler import compile_spec
from specbuilder.errors import SpecError
from specbuilder.spec import parse_spec

WIDTH, DEPTH = 256, 20
MLP: dict[str, Any] = {
    "name": "mlp-20x256",
    "input_shape": [WIDTH],
    "layers": [{"type": "linear", "out_features": WIDTH, "activation": "relu"}] * (DEPTH - 1)
    + [{"type": "linear", "out_features": WIDTH}],
}
CNN: dict[str, Any] = (
    SpecBuilder([1, 28, 28], name="small-cnn").conv2d(32, 3, padding=1).relu().max_pool2d(2)
    .conv2d(64, 3, padding=1).relu().max_pool2d(2).flatten().linear(128).relu().linear(10).to_dict()
)
HUGE: dict[str, Any] = {"name": "huge", "input_shape": [100_000], "layers": [{"type": "linear", "out_features": 300_000}]}
HUGE_PARAMS = 100_000 * 300_000 + 300_000

TARGET_INIT = 1.10
"""With initialization the work is filling the weights; specbuilder should add at most 10 %."""
TARGET_NO_INIT = 1.50
"""Without it the hand-built side is almost free, so validation shows; at most 1.5×."""
TARGET_REFUSE_NS = 10e6
TARGET_REFUSE_RSS = 1 << 20


def hand_mlp() -> nn.Sequential:
    """The MLP as a PyTorch user writes it."""
    layers: list[nn.Module] = []
    for index in range(DEPTH):
        layers.append(nn.Linear(WIDTH, WIDTH))
        if index < DEPTH - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def hand_cnn() -> nn.Sequential:
    """The CNN as a PyTorch user writes it."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def uninitialized(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``build`` on the meta device, then given real, unwritten CPU memory."""
    def run() -> nn.Module:
        with torch.device("meta"):
            model = build()
        return model.to_empty(device="cpu")
    return run


def check_same_model(spec: dict[str, Any], build: Callable[[], nn.Module]) -> None:
    """Both sides must build the same parameters, or the ratio compares different work."""
    ours = [tuple(p.shape) for p in compile_spec(spec, device="cpu").parameters()]
    theirs = [tuple(p.shape) for p in build().parameters()]
    if ours != theirs:
        raise AssertionError(f"{spec['name']}: compiled parameters {ours} differ from hand-built {theirs}")


def refuse_huge() -> None:
    """Ask to compile the 30-billion-parameter spec; it must be refused."""
    try:
        compile_spec(HUGE, device="cpu")
    except SpecError:
        return
    raise AssertionError("a 30-billion-parameter spec was compiled")


def refusal_rows(table: Table, repeat: int) -> None:
    """Time the refusal and show that resident memory does not move."""
    rss, peak = rss_bytes(), peak_rss_bytes()
    timing = measure(refuse_huge, repeat=repeat, warmup=3)
    rss_delta, peak_delta = rss_bytes() - rss, peak_rss_bytes() - peak
    table.figure(
        f"refuse a {HUGE_PARAMS / 1e9:.0f}-billion-parameter spec (`compile_spec` raises `SpecError`)",
        str(timing),
        baseline=f"`nn.Linear(100000, 300000)` would allocate {HUGE_PARAMS * 4 / 1e9:.0f} GB",
        target=f"< {format_ns(TARGET_REFUSE_NS)}",
        ok=timing.median_ns < TARGET_REFUSE_NS,
    )
    table.figure(
        f"resident memory over {len(timing.samples_ns) + 3} refusals: now / peak",
        f"{rss_delta / 1024:+.0f} KiB / {peak_delta / 1024:+.0f} KiB",
        target=f"< {TARGET_REFUSE_RSS >> 20} MiB",
        ok=max(rss_delta, peak_delta) < TARGET_REFUSE_RSS,
    )


def run(quick: bool) -> list[Table]:
    """The issue 2 table: compile ratios, validation time, refusal time and memory."""
    repeat, warmup = (15, 3) if quick else (200, 20)
    table = Table(
        "Spec validation and compilation (issue 2)",
        note=(
            "Each specbuilder figure starts from the spec dict: `compile_spec` validates, infers "
            "shapes and builds an `nn.Sequential` on CPU. The plain-PyTorch side builds the same "
            "`nn.Sequential` by hand. Median per model (p10, p90); ratio = specbuilder / plain."
        ),
    )
    refusal_rows(table, repeat)  # first, so the peak RSS it reports is not hidden by the others
    for label, spec, build in (("MLP 20×256", MLP, hand_mlp), ("CNN 28×28", CNN, hand_cnn)):
        check_same_model(spec, build)
        base, ours = compare(build, lambda: compile_spec(spec, device="cpu"), repeat=repeat, warmup=warmup)
        table.ratio(f"{label}: validate + compile, with init", base, ours, TARGET_INIT)
        empty = uninitialized(build)
        base, ours = compare(empty, lambda: compile_spec(spec, device="cpu", init=False), repeat=repeat, warmup=warmup)
        table.ratio(f"{label}: validate + compile, `init=False` (meta + `to_empty`)", base, ours, TARGET_NO_INIT)
        validate = measure(lambda: parse_spec(spec), repeat=repeat, warmup=warmup)
        share = validate.median_ns / ours.median_ns
        table.figure(f"{label}: validate only (`parse_spec`)", f"{validate}: {share:.0%} of the `init=False` compile")
    return [table]
