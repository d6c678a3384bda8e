"""Issue 3 figures: what the model store costs over writing and reading safetensors by hand.

One ~1 M-parameter MLP (784-1024-192-10, float32, 4 MB of weights). Saving through
``ModelStore.save`` (check the weights against the spec, write a temporary file, fsync it,
rename, fsync the directory, commit a SQLite row with ``synchronous=FULL``) against a plain
``safetensors.torch.save_file`` of the same state_dict, and against that plain write made
durable by hand (fsync of the file and of its directory), which is the part of the cost that
crash safety needs. Loading through ``ModelStore.load`` (read the row, ``load_file``, compile
with ``init=False``, strict ``load_state_dict``) against ``load_file`` alone, and against what a
PyTorch user writes to get a module back fast: build it on the meta device, then
``load_state_dict(load_file(path), assign=True)``. Both loads take the file's tensors without
copying them (``load_file`` maps the file privately); copying into freshly allocated memory
instead costs ~8x more on this machine (page faults on every fresh 4 KB page).
Every save writes a new file on both sides.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from benchmarks.harness import Table, compare
from specbuilder.builder import SpecBuilder
from specbuilder.compiler import compile_spec
from specbuilder.store import ModelStore
from specbuilder.store.files import fsync_path

MLP: dict[str, Any] = (
    SpecBuilder([784], name="mlp-1m").linear(1024, name="fc1", activation="relu").linear(192, name="fc2", activation="relu")
    .linear(10, name="fc3").to_dict()
)


def hand_mlp() -> nn.Sequential:
    """The same MLP as a PyTorch user writes it, with the same state_dict keys."""
    return nn.Sequential(OrderedDict(
        fc1=nn.Linear(784, 1024), relu1=nn.ReLU(), fc2=nn.Linear(1024, 192), relu2=nn.ReLU(), fc3=nn.Linear(192, 10),
    ))


def run(quick: bool) -> list[Table]:
    """The issue 3 table: save and load ratios for a 1 M-parameter model."""
    repeat, warmup = (8, 2) if quick else (40, 5)
    model = compile_spec(MLP, device="cpu", seed=0)
    state = model.state_dict()
    params = sum(p.numel() for p in model.parameters())
    table = Table(
        f"Model store: save and load of a {params / 1e6:.2f} M-parameter MLP (issue 3)",
        note=(
            "Median per call (p10, p90); ratio = specbuilder / plain. Each save writes a new file. "
            "Preliminary: a shared 2-core box with a virtual disk, where fsync dominates."
        ),
    )
    with tempfile.TemporaryDirectory(prefix="bench-store-") as scratch, ModelStore(Path(scratch) / "store") as store:
        plain_dir = Path(scratch) / "plain"
        plain_dir.mkdir()
        counter = itertools.count()

        def plain_save() -> None:
            save_file(state, plain_dir / f"{next(counter)}.safetensors")

        def durable_save() -> None:
            path = plain_dir / f"{next(counter)}.safetensors"
            save_file(state, path)
            fsync_path(path)
            fsync_path(plain_dir, directory=True)

        base, ours = compare(plain_save, lambda: store.save(model), repeat=repeat, warmup=warmup)
        table.ratio("save vs `save_file`", base, ours)
        base, ours = compare(durable_save, lambda: store.save(model), repeat=repeat, warmup=warmup)
        table.ratio("save vs `save_file` + fsync of file and directory", base, ours)

        model_id = store.save(model).id
        plain_path = plain_dir / "load.safetensors"
        save_file(state, plain_path)

        def hand_load() -> nn.Module:
            with torch.device("meta"):
                built = hand_mlp()
            built.load_state_dict(load_file(plain_path), assign=True)
            return built

        load = lambda: store.load(model_id, device="cpu")  # noqa: E731
        base, ours = compare(lambda: load_file(plain_path), load, repeat=repeat * 2, warmup=warmup)
        table.ratio("load vs `load_file`", base, ours)
        base, ours = compare(hand_load, load, repeat=repeat * 2, warmup=warmup)
        table.ratio("load vs meta-built module + `load_state_dict(load_file(...), assign=True)`", base, ours)
        table.figure("weights file", f"{os.path.getsize(plain_path) / 1e6:.1f} MB", baseline=f"{params:,} float32 parameters")
    return [table]
