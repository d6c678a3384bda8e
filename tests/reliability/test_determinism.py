"""Determinism under concurrency: one training submitted four times at once to one server gives
four bitwise-identical models, dropout and RReLU included, while other clients compile specs.

Dropout and RReLU draw from torch's process-wide generators; ``specbuilder.rng`` gives each run
its own stream and makes weight initialization take turns, which is what this checks end to end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch

from server_helpers import SPIRALS, batch, connect, serving, spec_source, train_request
from specbuilder.compiler import compile_spec
from specbuilder.training import train
from specbuilder_server import RunningServer
from specbuilder_wire.arrays import to_numpy
from specbuilder_wire.v1 import service_pb2 as pb
from specbuilder_wire.v1.service_pb2_grpc import ModelServiceStub

COPIES = 4
RANDOM_LAYERS: dict[str, Any] = {
    "name": "spirals-dropout",
    "input_shape": [2],
    "layers": [
        {"type": "linear", "out_features": 32, "name": "fc1", "activation": "relu"},
        {"type": "dropout", "p": 0.3},
        {"type": "linear", "out_features": 32, "name": "fc2", "activation": {"type": "rrelu", "lower": 0.05, "upper": 0.3}},
        {"type": "dropout", "p": 0.1},
        {"type": "linear", "out_features": 2, "name": "out"},
    ],
}
CASES = {
    "no random layers": (SPIRALS, {}),
    "dropout and rrelu, sequential": (RANDOM_LAYERS, {}),
    "dropout and rrelu, functional": (RANDOM_LAYERS, {"style": "functional"}),
}


@pytest.fixture(scope="module")
def four_slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("store"), max_concurrent_trains=COPIES) as running:
        yield running


def train_at_once(stub: ModelServiceStub, request: pb.TrainRequest, copies: int) -> list[tuple[str, pb.TrainFinished]]:
    """``copies`` Train calls released together; the run id and finished event of each."""
    barrier, finished, errors = threading.Barrier(copies), [], []

    def one() -> None:
        try:
            barrier.wait()
            events = list(stub.Train(request))
            finished.append((events[-1].run_id, events[-1].finished))
        except BaseException as error:  # reported by the test thread
            errors.append(error)

    threads = [threading.Thread(target=one) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return finished


@contextmanager
def compile_traffic(stub: ModelServiceStub) -> Iterator[list[int]]:
    """While the block runs, another thread evaluates fresh specs: each is compiled unseeded,
    drawing from torch's global generator. The list holds how many were answered, once it ends."""
    stop, answered, x = threading.Event(), [0], batch(np.ones((2, 2), np.float32))

    def evaluate() -> None:
        while not stop.is_set():
            width = 3 + answered[0]
            spec = {"name": f"traffic-{width}", "input_shape": [2], "layers": [{"type": "linear", "out_features": width}, {"type": "dropout"}]}
            stub.Evaluate(pb.EvaluateRequest(spec=spec_source(spec), input=x))
            answered[0] += 1

    thread = threading.Thread(target=evaluate)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join()


Weights = dict[str, tuple[str, tuple[int, ...], bytes]]


def exported(stub: ModelServiceStub, model_id: str) -> Weights:
    """A stored model's weights: each array's dtype, shape and bytes."""
    arrays = {key: to_numpy(tensor) for key, tensor in stub.ExportModel(pb.ExportModelRequest(model_id=model_id)).weights.items()}
    return {key: (str(array.dtype), array.shape, array.tobytes()) for key, array in arrays.items()}


def initial(spec: dict[str, Any], style: str, seed: int) -> dict[str, bytes]:
    """The bytes of each weight as a run with ``seed`` starts."""
    return {key: value.numpy().tobytes() for key, value in compile_spec(spec, style, "cpu", seed=seed).state_dict().items()}


@pytest.mark.parametrize("case", CASES)
def test_the_same_training_four_times_at_once_gives_four_identical_models(four_slots: RunningServer, case: str, budget: Any, tally: Any) -> None:
    spec, settings = CASES[case]
    rounds = budget.pick(1, 6)
    with connect(four_slots.address) as stub, connect(four_slots.address) as other:
        for round_ in range(rounds):
            config = {"epochs": 2, "batch_size": 32, "seed": 11 + round_, "stats_every": 5, **settings}
            with compile_traffic(other) as answered:
                runs = train_at_once(stub, train_request(spec, name=f"copy-{round_}", **config), COPIES)
            tally.count("Evaluate of a fresh spec during the trainings", "answered", answered[0])
            assert [finished.status for _, finished in runs] == [pb.RUN_STATUS_COMPLETED] * COPIES
            models = [exported(stub, run_id) for run_id, _ in runs]
            identical = all(model == models[0] for model in models[1:])
            tally.count(f"{COPIES} identical trainings at once ({case})", "bitwise identical" if identical else "differed")
            assert identical, [key for key in models[0] if any(model[key] != models[0][key] for model in models[1:])]
            start = initial(spec, settings.get("style", "sequential"), config["seed"])
            assert all(models[0][key][2] != start[key] for key in start), "the runs did not train"


def test_train_in_four_threads_at_once_matches_a_run_alone(budget: Any, tally: Any) -> None:
    """The core alone, no server: ``train()`` in four threads at once gives what it gives alone."""
    for seed in range(budget.pick(1, 10)):
        config = {"epochs": 2, "batch_size": 32, "seed": seed, "device": "cpu"}
        alone = train(RANDOM_LAYERS, "spirals", config).module.state_dict()
        barrier, results = threading.Barrier(COPIES), []

        def one() -> None:
            barrier.wait()
            results.append(train(RANDOM_LAYERS, "spirals", config).module.state_dict())

        threads = [threading.Thread(target=one) for _ in range(COPIES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        same = len(results) == COPIES and all(torch.equal(state[key], alone[key]) for state in results for key in alone)
        tally.count(f"train() in {COPIES} threads at once against a run alone", "bitwise identical" if same else "differed")
        assert same
