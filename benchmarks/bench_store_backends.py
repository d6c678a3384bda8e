"""The shared store's figures: PostgreSQL + a bucket against the directory store, and a replica's first call.

Real servers, started here with the test suite's own helpers (``tests/stores.py``, imported by
path): a PostgreSQL server (the ``pgserver`` package's binaries, on a Unix socket) and moto's
standalone S3 server in a process of its own on a loopback port. moto emulates S3 in memory,
so the bucket costs an HTTP round trip on loopback, not a real object store's network and disk.

1. **Save, get and load** of ``bench_store``'s 1 M-parameter MLP (4 MB of weights):
   ``ModelStore.open(postgresql://..., weights=s3://...)`` against a directory store, alternating
   call by call (``compare``). Each save writes a new entry on both sides.
2. **Evaluate by ``model_id``, cold against warm**: ``specbuilder serve`` replicas over that
   PostgreSQL and bucket. One replica trains two such MLPs (one epoch on 64 random rows each);
   then each of several fresh replicas, which never saw them, gets a Validate (its channel
   connects), one Evaluate of the first by id (cold: the process's first read of a record and
   weights from the store, with whatever it sets up lazily for that), one of the second (cold:
   one more model's load, in a process that has done one), then more of the second (warm: its
   cache, after the store confirms the id still exists). One row per call, so the call's fixed
   cost is what is left when warm. Ratio = median cold / median warm.
3. **One page of 100 summaries** (``ModelStore.page``, what ListModels runs) with ``ROWS``
   entries in the index, PostgreSQL against SQLite, alternating. The rows are runs
   (``start_run``, no weights), then marked ``interrupted`` when the store that started them
   closes, so no lease renewal runs while the pages are timed.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from benchmarks.bench_store import MLP
from benchmarks.harness import Table, Timing, compare
from benchmarks.serving import ROOT
from specbuilder.compiler import compile_spec
from specbuilder.demo.server import serve_subprocess
from specbuilder.spec import parse_spec
from specbuilder.store import ModelStore
from specbuilder_client import Client

ROWS = 10_000
"""Entries in each index for the listing (``--quick``: a tenth)."""
PAGE = 100
RUN_SPEC: dict[str, Any] = {"name": "tiny", "input_shape": [4], "layers": [{"type": "linear", "out_features": 2}]}
"""A tiny spec: the listed runs' (a page reads summary columns only, so their size does not matter), and what a
fresh replica validates so that its channel connects before the timed Evaluate."""


def store_servers() -> ModuleType:
    """``tests/stores.py``, imported by its path (``tests`` is no package): ``Postgres``, ``S3Server``, ``aws_env``."""
    spec = importlib.util.spec_from_file_location("stores", ROOT / "tests" / "stores.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BackendTable(Table):
    """The harness's table with the two stores as its columns."""

    HEADER = ("", "directory store (SQLite + files)", "PostgreSQL + bucket (moto S3)", "ratio", "target", "verdict")


class ColdTable(Table):
    """The harness's table with a replica's warm calls and its first call with an id as its columns."""

    HEADER = ("", "warm (cached)", "cold (first call with that id on the replica)", "ratio", "target", "verdict")


def save_get_load(table: Table, directory: ModelStore, shared: ModelStore, repeat: int, warmup: int) -> None:
    """Rows for save, get and load of the 1 M-parameter MLP, each store against the other, alternating."""
    model = compile_spec(MLP, device="cpu", seed=0)
    base, ours = compare(lambda: directory.save(model), lambda: shared.save(model), repeat=repeat, warmup=warmup)
    table.ratio("save, 1 M parameters (4 MB)", base, ours)
    mine, theirs = directory.save(model).id, shared.save(model).id
    base, ours = compare(lambda: directory.get(mine), lambda: shared.get(theirs), repeat=repeat * 4, warmup=warmup)
    table.ratio("get (the record)", base, ours)
    base, ours = compare(lambda: directory.load(mine, device="cpu"), lambda: shared.load(theirs, device="cpu"),
                         repeat=repeat * 2, warmup=warmup)
    table.ratio("load (record + weights + compile)", base, ours)


def filled(store: ModelStore, rows: int) -> float:
    """Add ``rows`` runs to ``store`` and close it (which marks them ``interrupted``); the seconds it took."""
    spec = parse_spec(RUN_SPEC)
    began = time.perf_counter()
    with store:
        for index in range(rows):
            store.start_run(spec, name=f"run-{index}")
    return time.perf_counter() - began


def listing(table: Table, directory: Path, url: str, bucket: str, rows: int, repeat: int, warmup: int) -> None:
    """The row for one page of ``PAGE`` summaries out of ``rows`` in each index, and how long filling them took."""
    seconds = (filled(ModelStore.open(directory), rows), filled(ModelStore.open(url, weights=bucket), rows))
    with ModelStore.open(directory) as mine, ModelStore.open(url, weights=bucket) as theirs:
        assert len(mine.page(limit=PAGE).records) == len(theirs.page(limit=PAGE).records) == PAGE
        base, ours = compare(lambda: mine.page(limit=PAGE), lambda: theirs.page(limit=PAGE), repeat=repeat, warmup=warmup)
    table.ratio(f"ListModels: one page of {PAGE} of {rows:,} entries (`page`)", base, ours)
    table.figure(f"filling the index: {rows:,} `start_run`, one process", f"{seconds[1]:.1f} s", baseline=f"{seconds[0]:.1f} s")


def timed(fn: Callable[[], object], samples: list[float]) -> None:
    """Call ``fn`` once and append how long it took, in nanoseconds, to ``samples``."""
    began = time.perf_counter_ns()
    fn()
    samples.append(time.perf_counter_ns() - began)


def cold_and_warm(scratch: Path, url: str, bucket: str, env: dict[str, str], replicas: int, warm_calls: int) -> dict[str, Timing]:
    """Evaluate of two models trained through one replica, on ``replicas`` fresh ones in turn; timings by the call's kind.

    On each fresh replica: a Validate (``connect``: the client's channel connects, no cost of
    the store); Evaluate of the first model by id (``first``: the process's first load from the
    store); of the second (``second``: a model's load from the store in a process that has loaded
    one); then ``warm_calls`` more of the second (``warm``, after one untimed). The replicas run
    one at a time, each stopped before the next starts.
    """
    flags = ("--weights", bucket, "--device", "cpu")
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((64, 784), dtype=np.float32), rng.integers(0, 10, 64))
    with serve_subprocess(url, *flags, env=env, log=scratch / "trainer.log") as trainer, Client(trainer.address) as client:
        trained = [client.train(MLP, data, epochs=1, batch_size=64, validation_split=0, seed=seed).result() for seed in (1, 2)]
    assert all(result.status == "completed" for result in trained), [result.reason for result in trained]
    first, second = (result.model_id for result in trained)
    x = rng.standard_normal((1, 784), dtype=np.float32)
    samples: dict[str, list[float]] = {"connect": [], "first": [], "second": [], "warm": []}
    for index in range(replicas):
        with serve_subprocess(url, *flags, env=env, log=scratch / f"replica-{index}.log") as server, Client(server.address) as client:
            timed(lambda: client.validate(RUN_SPEC), samples["connect"])
            timed(lambda: client.evaluate(first, x), samples["first"])
            timed(lambda: client.evaluate(second, x), samples["second"])
            client.evaluate(second, x)
            for _ in range(warm_calls):
                timed(lambda: client.evaluate(second, x), samples["warm"])
    return {kind: Timing(tuple(values)) for kind, values in samples.items()}


def run(quick: bool) -> list[Table]:
    """Both tables; the servers, replicas and stores are started here and gone before returning."""
    repeat, warmup, replicas, warm_calls, rows = (6, 2, 2, 5, ROWS // 10) if quick else (20, 3, 5, 20, ROWS)
    stores = store_servers()
    backends = BackendTable(
        "Model store: PostgreSQL + bucket against the directory store",
        note=("Median per call (p10, p90); ratio = PostgreSQL + bucket / directory store, both in this process, alternating. "
              "PostgreSQL (pgserver) on a Unix socket and moto's S3 server on loopback, both on this machine: moto emulates S3 "
              "in memory, so the bucket's cost here is loopback HTTP, not a real object store. A shared 2-core box."),
    )
    threads = torch.get_num_threads()
    replica_table = ColdTable(
        "Replicas over PostgreSQL + bucket: Evaluate by model_id, cold (loaded from the store) vs warm (cached)",
        note=(f"`specbuilder serve` over the same PostgreSQL and moto bucket, {threads} torch threads. Two 1 M-parameter MLPs "
              f"trained through one replica, then evaluated by id (one row) on {replicas} fresh replicas in turn, each after a "
              "Validate that connects the client's channel: the first model (the process's first load), then the second (a load "
              f"in a process that has done one), then {warm_calls} calls of the second (warm). One cold sample of each kind per "
              "replica. Ratio = cold / warm."),
    )
    with tempfile.TemporaryDirectory(prefix="bench-store-backends-") as name, ExitStack() as stack:
        scratch = Path(name)
        (scratch / "postgres").mkdir()
        postgres = stores.Postgres(scratch / "postgres")
        stack.callback(postgres.close)
        s3 = stores.S3Server()
        stack.callback(s3.stop)
        stack.enter_context(stores.aws_env(s3))
        with ModelStore.open(scratch / "directory") as directory, ModelStore.open(postgres.url(), weights=s3.bucket()) as shared:
            save_get_load(backends, directory, shared, repeat, warmup)
        listing(backends, scratch / "listed", postgres.url(), s3.bucket(), rows, repeat * 5, warmup)
        timings = cold_and_warm(scratch, postgres.url(), s3.bucket(), {**s3.env, "OMP_NUM_THREADS": str(threads)},
                                replicas, warm_calls)
    replica_table.ratio("Evaluate by id: the replica's first model", timings["warm"], timings["first"])
    replica_table.ratio("Evaluate by id: a model new to a replica that has loaded one", timings["warm"], timings["second"])
    replica_table.figure("before them, the replica's first call (Validate; the channel connects)", str(timings["connect"]))
    return [backends, replica_table]
