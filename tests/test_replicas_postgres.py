"""Replicas on "different hosts": two ``specbuilder serve`` processes over one PostgreSQL index and one bucket.

Nothing local is shared: each replica has a directory of its own for its home, temporary files
and caches, and the store is reached only through PostgreSQL and S3 (``tests/stores.py``), as
replicas on separate machines would reach it. Every check goes through gRPC: a model trained on
one is read, evaluated, exported and deleted on the other; a replica killed mid-training leaves
its run ``interrupted`` for the other once its lease lapses; PostgreSQL restarted or stopped,
and the bucket stopped during a run's final save, are answered as the store's contract says
(UNAVAILABLE naming PostgreSQL while the server stays healthy; a run that cannot save ends
``failed``, with nothing partial), and everything works again once they are back.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_helpers import ENDLESS, QUICK, SPIRALS, open_channel, server_process, wait_for

from specbuilder.demo.server import ServerProcess
from specbuilder_client import Client, FailedPrecondition, NotFound, TrainStarted, Unavailable
from stores import Postgres, S3Server

X = np.random.default_rng(1).standard_normal((16, 2), dtype=np.float32)
LEASE = "2"
"""Seconds of each replica's run lease (``--store-lease``): short, so a killed replica's run lapses soon."""


@dataclass
class Store:
    """The index and bucket every replica opens, and the servers behind them (which tests stop and start)."""

    url: str
    weights: str
    postgres: Postgres
    bucket: S3Server
    root: Path
    logs: Path
    """Where the replicas' stderr goes: outside ``root``, which must end empty."""

    def replica(self, name: str) -> AbstractContextManager[ServerProcess]:
        """``specbuilder serve`` over this store, with a directory of its own (``root/name``) for home, temporary files and caches."""
        local = self.root / name
        local.mkdir()
        env = {"HOME": str(local), "TMPDIR": str(local), "XDG_CACHE_HOME": str(local / "cache"), "XDG_DATA_HOME": str(local / "data"),
               **self.bucket.env}
        return server_process(self.url, "--weights", self.weights, "--store-lease", LEASE, env=env, log=self.logs / f"{name}.log")


@dataclass
class Replicas:
    """The store and two replicas serving it for the module: A and B."""

    store: Store
    a: ServerProcess
    b: ServerProcess


@pytest.fixture(scope="module")
def replicas(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Replicas A and B over a fresh schema and a bucket on an S3 server of the module's own (one test stops it)."""
    bucket = S3Server()
    try:
        store = Store(postgres.url(), bucket.bucket(), postgres, bucket, tmp_path_factory.mktemp("hosts"), tmp_path_factory.mktemp("logs"))
        with store.replica("a") as a, store.replica("b") as b:
            yield Replicas(store, a, b)
    finally:
        bucket.stop()


def serving_status(address: str) -> int:
    """The server's overall health status."""
    with open_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


def test_a_model_trained_on_one_replica_is_read_evaluated_exported_and_deleted_on_the_other(replicas: Replicas) -> None:
    with Client(replicas.a.address) as on_a, Client(replicas.b.address) as on_b:
        trained = on_a.train(SPIRALS, "spirals", **QUICK).result()
        assert trained.status == "completed"
        record = on_b.get_model(trained.model_id)
        assert (record.status, record.has_weights, len(record.history)) == ("completed", True, QUICK["epochs"])
        expected = on_a.evaluate(trained.model_id, X).outputs  # now in A's cache of loaded models
        np.testing.assert_array_equal(on_b.evaluate(trained.model_id, X).outputs, expected)
        spec, weights = on_b.export_model(trained.model_id)
        assert spec["name"] == SPIRALS["name"] and set(weights) == {"fc1.weight", "fc1.bias", "out.weight", "out.bias"}

        on_b.delete_model(trained.model_id)
        with pytest.raises(NotFound, match=trained.model_id):
            on_a.get_model(trained.model_id)
        with pytest.raises(NotFound, match=trained.model_id):
            on_a.evaluate(trained.model_id, X)
    assert [p for p in replicas.store.root.rglob("*") if p.is_file()] == []  # no host kept anything of the store


def test_a_replica_killed_mid_training_leaves_its_run_interrupted_for_the_other(replicas: Replicas) -> None:
    with replicas.store.replica("doomed") as doomed, Client(doomed.address) as on_doomed, Client(replicas.b.address) as on_b:
        run = on_doomed.train(SPIRALS, "spirals", **ENDLESS)
        started = next(iter(run))
        assert isinstance(started, TrainStarted)
        wait_for(lambda: on_b.get_model(started.run_id).history, "the doomed replica's progress, read through B")
        assert on_b.get_model(started.run_id).status == "running"
        doomed.send_signal(signal.SIGKILL)
        doomed.process.wait()
        wait_for(lambda: started.run_id in {m.id for m in on_b.list_models(status="interrupted")}, "the run listed interrupted on B")
        record = on_b.get_model(started.run_id)
        assert record.status == "interrupted" and "stopped renewing its lease" in record.reason


def test_postgresql_restarted_between_calls_is_not_noticed(replicas: Replicas) -> None:
    with Client(replicas.a.address) as on_a, Client(replicas.b.address) as on_b:
        trained = on_a.train(SPIRALS, "spirals", **QUICK).result()
        assert on_b.get_model(trained.model_id).status == "completed"
        replicas.store.postgres.pg_ctl("-m", "fast", "restart")
        assert on_b.get_model(trained.model_id).status == "completed"
        assert on_b.evaluate(trained.model_id, X).outputs.shape == (len(X), 2)


def test_postgresql_stopped_is_unavailable_for_the_store_only_until_it_is_back(replicas: Replicas) -> None:
    with Client(replicas.a.address) as on_a, Client(replicas.b.address) as on_b:
        trained = on_a.train(SPIRALS, "spirals", **QUICK).result()
        replicas.store.postgres.stop()
        try:
            with pytest.raises(Unavailable, match="the PostgreSQL index at postgresql://.* cannot be reached"):
                on_b.get_model(trained.model_id)
            assert serving_status(replicas.b.address) == health_pb2.HealthCheckResponse.SERVING
            assert on_b.evaluate(SPIRALS, X).outputs.shape == (len(X), 2)
        finally:
            replicas.store.postgres.start()
        assert on_b.get_model(trained.model_id).status == "completed"
        assert on_b.evaluate(trained.model_id, X).outputs.shape == (len(X), 2)


def test_a_run_whose_final_save_finds_the_bucket_stopped_ends_failed_with_nothing_partial(replicas: Replicas) -> None:
    store = replicas.store
    with Client(replicas.a.address) as on_a, Client(replicas.b.address) as on_b:
        store.bucket.stop()  # a run's start writes only its row: the bucket is first needed by its final save
        try:
            events = list(on_a.train(SPIRALS, "spirals", **QUICK))
        finally:
            store.bucket.start()
            store.bucket.bucket(urlsplit(store.weights).netloc)  # made again: moto kept its buckets in memory
        finished = events[-1]
        assert (type(events[0]), finished.status) == (TrainStarted, "failed")
        assert "the weights bucket s3://" in finished.reason and "cannot be reached" in finished.reason
        record = on_b.get_model(finished.run_id)
        assert (record.status, record.has_weights, record.reason) == ("failed", False, finished.reason)
        assert finished.run_id not in {m.id for m in on_b.list_models(status="completed")}
        with pytest.raises(FailedPrecondition):
            on_b.evaluate(finished.run_id, X)

        trained = on_a.train(SPIRALS, "spirals", **QUICK).result()
        assert trained.status == "completed"
        assert on_b.evaluate(trained.model_id, X).outputs.shape == (len(X), 2)
