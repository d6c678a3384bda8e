"""Faults: the server killed (SIGKILL) or stopped (SIGTERM) while one run trains and another saves
its weights, and a disk that refuses a weights file. Nothing partial is left, no model is lost.

After every kill a server is started again over the same store and checked through its RPCs
and the store's folder: it answers; every model that completed before is listed and exports
the very same weights; the run that was training shows as interrupted, the one that was saving
as interrupted or (when the kill came after its save committed) completed and loadable;
nothing is running; the weights folder holds exactly one file per model with weights, no
temporary or orphaned file.
``models lost`` must stay 0.
"""

from __future__ import annotations

import hashlib
import random
import resource
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

import pytest
from server_helpers import ENDLESS, batch, connect, open_channel, server_process, serving, spec_source, train_request, wait_for
from stores import aws_env, stored_weights
from specbuilder.builder import SpecBuilder
from specbuilder.demo.server import ServerProcess
from specbuilder_wire.arrays import to_numpy, to_proto
from specbuilder_wire.v1 import service_pb2 as pb
from specbuilder_wire.v1.service_pb2_grpc import ModelServiceStub
from specbuilder_wire.values import encode_value

BIG: dict[str, Any] = (
    SpecBuilder([4], name="big").linear(2048, name="fc1", activation="relu").linear(4096, name="fc2", activation="relu")
    .linear(2, name="out").to_dict()
)
"""8.4 M parameters: a 34 MB weights file, long enough to write that a kill can land inside the save."""
BIG_X = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
BIG_Y = np.arange(8) % 2
FILE_LIMIT = 8 << 20
"""Bytes a file may reach under the disk-failure test: far above the index, far below BIG's weights."""
SMALL_X = batch(np.ones((3, 2), np.float32))
OUTCOMES = {
    pb.RUN_STATUS_INTERRUPTED: "run interrupted, nothing partial",
    pb.RUN_STATUS_COMPLETED: "save committed first: model complete",
    pb.RUN_STATUS_CANCELLED: "run cancelled, weights kept",
}
EXPECTED = {
    ("SIGKILL", "training"): {pb.RUN_STATUS_INTERRUPTED},
    ("SIGKILL", "save"): {pb.RUN_STATUS_INTERRUPTED, pb.RUN_STATUS_COMPLETED},
    ("SIGTERM", "training"): {pb.RUN_STATUS_CANCELLED},
    ("SIGTERM", "save"): {pb.RUN_STATUS_COMPLETED},
}
"""What a run cut short by a signal while training or while saving may read as after the restart."""


def big_request(name: str) -> pb.TrainRequest:
    """One epoch of BIG on 8 samples sent with the request: quick to train, slow to save."""
    config = {"epochs": 1, "batch_size": 8, "validation_split": 0.0}
    return pb.TrainRequest(spec=spec_source(BIG), name=name, arrays=pb.TrainArrays(x=to_proto(BIG_X), y=to_proto(BIG_Y)),
                           config={key: encode_value(value, key) for key, value in config.items()})


def digest(stub: ModelServiceStub, model_id: str) -> str:
    """A hash of a stored model's exported weights: names, dtypes, shapes and bytes."""
    weights = stub.ExportModel(pb.ExportModelRequest(model_id=model_id)).weights
    hashed = hashlib.sha256()
    for key in sorted(weights):
        array = to_numpy(weights[key])
        hashed.update(f"{key}:{array.dtype}:{array.shape}".encode())
        hashed.update(array.tobytes())
    return hashed.hexdigest()


def completed_model(stub: ModelServiceStub, name: str) -> str:
    """Train a small model to completion; its id."""
    events = list(stub.Train(train_request(name=name)))
    assert events[-1].finished.status == pb.RUN_STATUS_COMPLETED
    return events[-1].run_id


@dataclass(frozen=True)
class Where:
    """A store the servers share: a directory, or a PostgreSQL index with weights in a bucket (and a short run lease)."""

    store: str | Path
    weights: str | None = None
    log: Path | None = None
    """Where a ``specbuilder serve`` process writes its stderr (beside a directory store when None)."""

    def __str__(self) -> str:
        return "directory" if self.weights is None else "postgresql+s3"

    @property
    def flags(self) -> list[str]:
        """``serve`` flags after ``--store`` (which ``server_process`` gives)."""
        return [] if self.weights is None else ["--weights", self.weights, "--store-lease", str(LEASE_SECONDS)]

    @property
    def settings(self) -> dict[str, Any]:
        """The same as ``ServerConfig`` settings."""
        extra = {} if self.weights is None else {"weights": self.weights, "store_lease_seconds": LEASE_SECONDS}
        return {"store": self.store, **extra}

    def weight_ids(self) -> set[str]:
        """The ids whose weights the store holds (a temporary file or an unreferenced object by its own name)."""
        from specbuilder.store import ModelStore

        with ModelStore.open(self.store, weights=self.weights) as store:
            return stored_weights(store)


LEASE_SECONDS = 2
""""The run lease of the PostgreSQL backend here: a killed server's runs read interrupted this soon."""


def drain(call: Any) -> str:
    """Read a Train stream to its end: "finished", or the status code that ended it."""
    try:
        for _ in call:
            pass
    except grpc.RpcError as error:
        return error.code().name
    return "finished"


@dataclass
class Ledger:
    """What the store must hold: each completed model's weights digest, and the runs a signal cut short."""

    where: Where
    models: dict[str, str] = field(default_factory=dict)
    victims: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """run id -> (signal, what the run was doing, how its Train stream ended)."""

    def check(self, stub: ModelServiceStub) -> tuple[list[str], dict[str, str]]:
        """Check a (re)started server's store: completed models lost or changed, and how each cut-short run reads."""
        wait_for(lambda: not stub.ListModels(pb.ListModelsRequest(status=pb.RUN_STATUS_RUNNING)).models,
                 "a killed server's runs to read interrupted (at once on a directory, within the lease on PostgreSQL)")
        listed = {model.id: model for model in stub.ListModels(pb.ListModelsRequest(page_size=1000)).models}
        lost = [model_id for model_id, hashed in self.models.items()
                if model_id not in listed or listed[model_id].status != pb.RUN_STATUS_COMPLETED or digest(stub, model_id) != hashed]
        assert [m.name for m in listed.values() if m.status == pb.RUN_STATUS_RUNNING] == []
        outcomes = {}
        for run_id, (sent, doing, ending) in self.victims.items():
            record = stub.GetModel(pb.GetModelRequest(model_id=run_id))
            assert record.status in EXPECTED[sent, doing], (sent, doing, record)
            if sent == "SIGKILL" and ending == "finished":  # the client was told it finished: then it is stored so
                assert record.status == pb.RUN_STATUS_COMPLETED, (sent, doing, record)
            assert record.has_weights == (record.status != pb.RUN_STATUS_INTERRUPTED) and record.reason, (sent, doing, record)
            if record.has_weights:  # complete: it loads and runs
                assert stub.Evaluate(pb.EvaluateRequest(model_id=run_id, input=batch(BIG_X) if doing == "save" else SMALL_X)).output.shape
            outcomes[run_id] = OUTCOMES[record.status]
        assert self.where.weight_ids() == {m.id for m in listed.values() if m.has_weights}
        return lost, outcomes


def cut_short(server: ServerProcess, stub: ModelServiceStub, where: Where, sent: signal.Signals, delay: float,
              tally: Any) -> dict[str, tuple[str, str]]:
    """One run training endlessly, another (BIG) training briefly; ``sent`` goes to the server
    ``delay`` seconds after new weights show in the store (a file, an object), that is, inside BIG's
    save (or just after it). The run ids, with what each was doing and how its Train stream ended."""
    before = where.weight_ids()
    training = stub.Train(train_request(name="cut-short-training", **ENDLESS))
    saving = stub.Train(big_request("cut-short-save"))
    saving_id = next(saving).run_id
    victims = {next(training).run_id: "training", saving_id: "save"}
    endings: dict[str, str] = {}
    readers = [threading.Thread(target=lambda c=call, d=doing: endings.__setitem__(d, drain(c)))
               for call, doing in ((training, "training"), (saving, "save"))]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 60
        while where.weight_ids() <= before:  # polled often: the save lasts a fraction of a second
            assert time.monotonic() < deadline, "BIG's save never began"
            time.sleep(0.001)
        time.sleep(delay)
        moment = "in place" if saving_id in where.weight_ids() else "not committed yet"
        server.send_signal(sent)
        assert server.process.wait() == (0 if sent == signal.SIGTERM else -signal.SIGKILL)
    finally:
        for reader in readers:
            reader.join()
    # a stopping server ends its streams with the outcome; a killed one leaves the client UNAVAILABLE,
    # unless the save was over and its finished event sent before the kill
    assert endings["training"] == ("finished" if sent == signal.SIGTERM else "UNAVAILABLE")
    assert endings["save"] in (("finished",) if sent == signal.SIGTERM else ("UNAVAILABLE", "finished"))
    tally.count(f"{sent.name} sent while the weights being saved were", moment)
    return {run_id: (doing, endings[doing]) for run_id, doing in victims.items()}


@pytest.fixture(params=("directory", "postgresql+s3"))
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """The store of a kill test: a directory, or PostgreSQL and a bucket (their servers started by the suite)."""
    if request.param == "directory":
        yield Where(tmp_path / "store")
        return
    postgres, s3 = request.getfixturevalue("postgres"), request.getfixturevalue("s3_server")
    with aws_env(s3):
        yield Where(postgres.url(), s3.bucket(), tmp_path / "server.log")


def test_killed_and_stopped_servers_lose_no_model_and_leave_nothing_partial(where: Where, budget: Any, tally: Any) -> None:
    """Each round: a server (in this process: quick to start) checks the store the last signal
    left and completes one more model; then a ``specbuilder serve`` process is cut short."""
    rng = random.Random(5)
    signals = budget.pick([signal.SIGKILL] * 2, [signal.SIGKILL, signal.SIGKILL, signal.SIGTERM] * 5)
    ledger, lost_total, survived, last = Ledger(where), 0, Counter(), {}
    for index in range(len(signals) + 1):
        with serving(**where.settings) as restarted, connect(restarted.address) as stub:
            if index:
                lost, outcomes = ledger.check(stub)
                lost_total += len(lost)
                survived[signals[index - 1].name] += not lost
                for run_id, (doing, _) in last.items():
                    tally.count(f"{signals[index - 1].name} during a {doing}", outcomes[run_id])
                assert lost == [], f"after a {signals[index - 1].name}: lost {lost}"
            if index == len(signals):
                break
            model_id = completed_model(stub, f"kept-{index}")
            ledger.models[model_id] = digest(stub, model_id)
        with server_process(where.store, *where.flags, log=where.log) as server, connect(server.address) as stub:
            delay = 0.0 if index % 2 == 0 else rng.uniform(0.0, 0.3)  # at once: inside the write; later: anywhere up to the commit and past it
            last = cut_short(server, stub, where, signals[index], delay, tally)
            ledger.victims.update({run_id: (signals[index].name, doing, ending) for run_id, (doing, ending) in last.items()})
    tally.figure("SIGKILLs survived", survived["SIGKILL"])
    tally.figure("SIGTERMs survived", survived["SIGTERM"])
    tally.figure("models lost", lost_total)
    tally.figure("completed models kept", len(ledger.models))


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """No file this process writes may grow past ``limit`` bytes while the block runs: write() fails
    with EFBIG (Python ignores SIGXFSZ, which would otherwise kill the process)."""
    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_save_the_disk_refuses_fails_the_run_leaves_nothing_and_the_server_serves_on(tmp_path: Path, budget: Any, tally: Any) -> None:
    store = tmp_path / "store"
    with serving(store) as server, connect(server.address) as stub, open_channel(server.address) as channel:
        kept = {model_id: digest(stub, model_id) for model_id in (completed_model(stub, f"before-{i}") for i in range(2))}
        for attempt in range(budget.pick(1, 5)):
            with file_size_limit(FILE_LIMIT):
                events = list(stub.Train(big_request(f"too-big-{attempt}")))
            finished, run_id = events[-1].finished, events[-1].run_id
            assert finished.status == pb.RUN_STATUS_FAILED and "could not write the weights" in finished.reason, finished
            assert str(store) not in finished.reason  # the client learns what failed, not where the store lives
            record = stub.GetModel(pb.GetModelRequest(model_id=run_id))
            assert (record.status, record.has_weights, record.reason) == (pb.RUN_STATUS_FAILED, False, finished.reason)
            assert Where(store).weight_ids() == set(kept)  # nothing partial
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert {model_id: digest(stub, model_id) for model_id in kept} == kept
            after = completed_model(stub, f"after-{attempt}")  # the next save works
            kept[after] = digest(stub, after)
            tally.count("weights write refused by the disk (EFBIG)", "run FAILED, nothing partial, still serving")
    tally.figure("models kept after refused writes", len(kept))
