"""Distributed training (issue 6): DistributedDataParallel over 2 CPU processes on loopback (gloo).

Every launch spawns two ranks that each import torch, so the file keeps to four: one full run
(shared by the tests of completion, accuracy and final statistics), one cancelled run with
statistics at every step, one run whose rank is killed, and ``specbuilder train --nproc 2``
in a subprocess. Ranks use one thread each on this 2-core machine (cores / ranks per node).
The merged statistics are checked against one process replaying exactly the ranks' batches.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from torch.utils.data import DistributedSampler

from server_helpers import rpc_error, train_request
from specbuilder.cli import main
from specbuilder.compiler import compile_spec
from specbuilder.datasets import DataError, as_dataset
from specbuilder.spec import parse_spec
from specbuilder.stats import ActivationMonitor, LayerState, LayerStats, all_merge_states
from specbuilder.store import ModelStore
from specbuilder.training import (
    CancelToken, ConfigError, DistributedError, EpochEvent, Event, FinishedEvent, Launch, StartedEvent, StatsEvent,
    TrainResult, launch_events, parse_config, train,
)
from specbuilder.training.data import Prepared, choose_loss, prepare
from specbuilder.training.distributed import LaunchError
from specbuilder_wire.v1 import service_pb2_grpc

SPEC = {
    "name": "spirals-relu",
    "input_shape": [2],
    "layers": [{"type": "linear", "out_features": 64, "activation": "relu"}] * 2 + [{"type": "linear", "out_features": 2}],
}
ONE = {"epochs": 30, "batch_size": 64, "lr": 0.02, "lr_schedule": "cosine", "seed": 0, "device": "cpu"}
"""test_training's spirals lesson: one process reaches >= 95% validation accuracy."""
TWO = {**ONE, "world_size": 2, "batch_size": 32}
"""The same optimization over two ranks: 32 samples each per step is the same 64 per step, 13 steps per epoch."""
BAND = 0.03
"""Two ranks see the epochs in another order (DistributedSampler's permutation, not one process's),
so they do not reach the very same weights; their accuracy must still be in the one-process band
(>= 95%) and within 3 points (6 of 200 validation samples) of it."""
LIVENESS_SECONDS = 300
"""Only a hang gets near this: a failing run ends within seconds."""


pytestmark = pytest.mark.usefixtures("one_thread")


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def prepared(config: dict[str, Any]) -> Prepared:
    """The tensors every rank trains and validates on: the same seeded split as one process."""
    spec = parse_spec(SPEC)
    dataset = as_dataset("spirals", seed=config["seed"])
    return prepare(dataset, spec, choose_loss(None, dataset, spec), 0.2, config["seed"], torch.device("cpu"), torch.float32)


def assert_same_stats(got: list[LayerStats], want: list[LayerStats]) -> None:
    """Integer-derived fields and extremes exactly; float64 moments and sums to rounding."""
    exact = {"index", "name", "count", "nan_count", "inf_count", "zero_fraction", "saturated_fraction", "dead_fraction",
             "units", "histogram", "min", "max"}
    assert [layer.model_dump(include=exact) for layer in got] == [layer.model_dump(include=exact) for layer in want]
    for mine, theirs in zip(got, want, strict=True):
        for name in ("mean", "std", "grad_norm"):
            value, expected = getattr(mine, name), getattr(theirs, name)
            assert (value is None) == (expected is None), name
            if expected is not None:
                assert value == pytest.approx(expected, rel=1e-9), name


# --- checked before any rank starts --------------------------------------------------------------


@pytest.mark.parametrize(("value", "message"), [
    (0, "must be >= 1, got 0"),
    (4097, "must be <= 4096, got 4097"),
    ("two", "must be an integer, got str 'two'"),
])
def test_world_size_is_validated_at_its_path(value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"world_size": value})
    assert [(p.path, p.message) for p in caught.value.problems] == [("world_size", message)]


@pytest.mark.parametrize(("settings", "field", "message"), [
    ({"nnodes": 0}, "nnodes", "must be >= 1, got 0"),
    ({"nnodes": 2}, "rdzv_endpoint", "is required with nnodes > 1"),
    ({"nnodes": 2, "rdzv_endpoint": "node0"}, "rdzv_endpoint", "must be HOST:PORT"),
    ({"nnodes": 2, "rdzv_endpoint": "node0:29400", "node_rank": 2}, "node_rank", "must be in [0, 1]"),
    ({"node_rank": 0}, "rdzv_endpoint", "is required with node_rank"),
    ({"collective_timeout": 0}, "collective_timeout", "must be > 0"),
])
def test_launch_settings_name_their_field(settings: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(LaunchError) as caught:
        Launch(**settings)
    assert caught.value.field == field and caught.value.message.startswith(message)


@pytest.mark.parametrize(("model", "data", "config", "launch", "error", "text"), [
    (SPEC, "spirals", {"world_size": 3}, Launch(nnodes=2, rdzv_endpoint="127.0.0.1:29400"), ConfigError,
     "world_size: must be a multiple of nnodes (2)"),
    ({"input_shape": [2], "layers": [{"type": "relu"}]}, "spirals", {"world_size": 2}, None, ConfigError,
     "world_size: the model has no trainable parameters"),
    ({**SPEC, "input_shape": [3]}, "spirals", {"world_size": 2}, None, DataError, "expected 3 features per sample"),
])
def test_problems_are_raised_before_any_rank_starts(model: Any, data: str, config: dict[str, Any], launch: Launch | None,
                                                    error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        next(launch_events(model, data, {**config, "device": "cpu"}, launch=launch))


def test_the_service_refuses_distributed_runs_at_the_config_path(stub: service_pb2_grpc.ModelServiceStub) -> None:
    failure = rpc_error(lambda: stub.Train(train_request(epochs=2, world_size=2)))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT and failure.fields == ["config.world_size"]
    assert "specbuilder train SPEC --nproc N" in failure.message


def test_merge_packs_every_accumulator_bit_for_bit() -> None:
    """A group of one: ``all_merge_states`` gives back exactly the states it was given (moments by their bits)."""
    store = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = compile_spec(SPEC, seed=0)
        with ActivationMonitor(model) as monitor:
            model(torch.randn(50, 2)).sum().backward()
            states = monitor.state()
        merged = all_merge_states(states)
    finally:
        torch.distributed.destroy_process_group()
    for mine, theirs in zip(merged, states, strict=True):
        assert isinstance(mine, LayerState)
        assert torch.equal(mine.counts, theirs.counts) and torch.equal(mine.alive, theirs.alive)
        assert torch.equal(mine.moments.view(torch.int64), theirs.moments.view(torch.int64))


# --- two ranks: one full run --------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks() -> tuple[TrainResult, list[Event]]:
    events: list[Event] = []
    return train(SPEC, "spirals", TWO, on_event=events.append), events


def test_two_ranks_complete_with_one_process_event_stream(two_ranks: tuple[TrainResult, list[Event]]) -> None:
    result, events = two_ranks
    assert result.status == "completed" and result.rank == 0 and result.config.world_size == 2
    assert isinstance(events[0], StartedEvent) and isinstance(events[-1], FinishedEvent)
    started = events[0]
    assert (started.train_samples, started.val_samples, started.steps_per_epoch) == (800, 200, 13)
    assert started.config == parse_config(TWO)
    epochs = [event.metrics for event in events if isinstance(event, EpochEvent)]
    assert [m.epoch for m in epochs] == list(range(1, 31)) and result.history == epochs
    assert result.steps == 30 * 13 and epochs[-1].step == result.steps
    assert epochs[-1].loss < epochs[0].loss
    assert events[-1].result is result and result.final.accuracy == epochs[-1].accuracy


def test_accuracy_is_in_the_band_of_one_process(two_ranks: tuple[TrainResult, list[Event]]) -> None:
    one = train(SPEC, "spirals", ONE)
    two = two_ranks[0]
    assert one.final.accuracy is not None and two.final.accuracy is not None
    assert one.final.accuracy >= 0.95 and two.final.accuracy >= 0.95
    assert abs(two.final.accuracy - one.final.accuracy) <= BAND


def test_final_statistics_equal_one_process_over_the_whole_validation_set(two_ranks: tuple[TrainResult, list[Event]]) -> None:
    """Each rank monitored its half of the validation set; merged, they are one pass over all of it."""
    result = two_ranks[0]
    data = prepared(TWO)
    model = compile_spec(SPEC, seed=0, init=False)
    model.load_state_dict(result.module.state_dict())
    model.eval()
    with torch.no_grad(), ActivationMonitor(model, grads=False) as monitor:
        model(data.x_val)
        reference = monitor.stats()
    assert_same_stats(result.stats, reference)
    assert result.final.samples == 200 and weights_equal(model, result.module)


# --- two ranks: cancelled, statistics every step -------------------------------------------------


@pytest.fixture(scope="module")
def cancelled() -> tuple[TrainResult, list[Event]]:
    token = CancelToken()
    events: list[Event] = []

    def on_event(event: Event) -> None:
        events.append(event)
        if isinstance(event, EpochEvent):
            token.cancel("stop requested by the test")

    return train(SPEC, "spirals", {**TWO, "epochs": 1000, "stats_every": 1}, on_event=on_event, cancel=token), events


def test_a_cancel_stops_every_rank_with_its_reason(cancelled: tuple[TrainResult, list[Event]]) -> None:
    result, events = cancelled
    assert result.status == "cancelled" and result.reason.startswith("stop requested by the test after")
    assert 13 < result.steps < 1000 * 13 and result.epochs == len(result.history) >= 1
    assert [e.step for e in events if isinstance(e, StatsEvent)] == list(range(1, result.steps + 1))


def test_the_first_window_equals_one_process_replaying_both_shards(cancelled: tuple[TrainResult, list[Event]]) -> None:
    """Step 1: each rank's batch is the head of its DistributedSampler shard, through the starting
    weights; one process runs both batches (forward and backward) under one monitor."""
    first = next(e for e in cancelled[1] if isinstance(e, StatsEvent))
    data = prepared(TWO)
    model = compile_spec(SPEC, seed=0)
    with ActivationMonitor(model, grads=True) as monitor:
        for rank in range(2):
            sampler = DistributedSampler(range(len(data.x_train)), num_replicas=2, rank=rank, seed=TWO["seed"])
            sampler.set_epoch(0)
            rows = torch.tensor(list(sampler))[:TWO["batch_size"]]
            torch.nn.functional.cross_entropy(model(data.x_train[rows]), data.t_train[rows]).backward()
        reference = monitor.stats()
    assert first.step == 1 and all(layer.grad_norm is not None for layer in reference)
    assert_same_stats(first.layers, reference)


# --- two ranks: a rank dies ---------------------------------------------------------------------


def rank_pids() -> list[int]:
    """This process's children that are spawned ranks (not multiprocessing's resource tracker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and b"spawn_main" in command:
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the ranks through /proc")
def test_a_killed_rank_fails_the_run_instead_of_hanging() -> None:
    outcome: dict[str, BaseException | TrainResult] = {}

    def kill_a_rank(event: Event) -> None:
        if isinstance(event, StartedEvent):
            os.kill(rank_pids()[-1], signal.SIGKILL)

    def run() -> None:
        try:
            outcome["result"] = train(SPEC, "spirals", {**TWO, "epochs": 1000}, on_event=kill_a_rank)
        except BaseException as error:  # noqa: BLE001 -- examined below
            outcome["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(LIVENESS_SECONDS)
    assert not worker.is_alive(), "the run hung after a rank died"
    error = outcome.get("error")
    assert isinstance(error, DistributedError), outcome
    assert str(error).startswith("rank ") and "the other ranks were stopped" in str(error)
    assert rank_pids() == []


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(parse_spec(SPEC).to_json())
    return path


def test_cli_trains_with_nproc_2_and_saves_rank_0s_model(spec_file: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    command = [sys.executable, "-m", "specbuilder", "train", str(spec_file), "--data", "spirals", "--epochs", "2",
               "--batch-size", "32", "--nproc", "2", "--device", "cpu", "--quiet", "--store", str(store)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=LIVENESS_SECONDS,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert done.returncode == 0, done.stderr
    assert "13 steps per epoch" in done.stdout and "2 processes" in done.stdout
    assert "completed: trained 2 epochs (26 steps)" in done.stdout
    with ModelStore(store) as models:
        [record] = models.list()
        assert record.status == "completed" and record.config["world_size"] == 2 and len(record.history) == 2
        assert f"model id: {record.id}" in done.stdout
        assert models.load(record.id, "cpu").spec == parse_spec(SPEC)


@pytest.mark.parametrize(("flags", "message"), [
    (["--nproc", "0"], "--nproc: must be >= 1, got 0"),
    (["--nproc", "2", "--nnodes", "2"], "--rdzv-endpoint: is required with nnodes > 1"),
    (["--nproc", "2", "--nnodes", "2", "--rdzv-endpoint", "h:1", "--node-rank", "5"], "--node-rank: must be in [0, 1]"),
    (["--nproc", "2", "--server", "127.0.0.1:1"], "--nproc: not with --server (the service trains each run in one process"),
])
def test_cli_distributed_flags_are_checked(spec_file: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(spec_file), "--data", "spirals", *flags]) == 1
    assert capsys.readouterr().err.startswith(message)


def test_train_help_documents_the_rendezvous_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--nproc N", "--nnodes M", "--node-rank K", "--rdzv-endpoint HOST:PORT", "--rdzv-id ID"):
        assert flag in text


@pytest.fixture(autouse=True, scope="module")
def no_rank_left() -> Iterator[None]:
    """Every launch waits for its ranks to exit: none outlives the tests."""
    yield
    assert rank_pids() == []
