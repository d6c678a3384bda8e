"""Training runs as jobs (cancel, deadline, time limit, a full pool) and the server's own life:
a graceful stop on SIGTERM, a restart over the same store, the ``serve`` command's errors."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server_helpers import (
    ENDLESS, QUICK, batch, connect, open_channel, rpc_error, server_process, serving, train_request, wait_for,
)
from specbuilder.cli import main
from specbuilder.store import ModelStore
from specbuilder_server import RunningServer
from specbuilder_wire.arrays import to_numpy
from specbuilder_wire.v1 import service_pb2 as pb
from specbuilder_wire.v1.service_pb2_grpc import ModelServiceStub as Stub


X = np.random.default_rng(1).normal(size=(5, 2)).astype(np.float32)


def status_is(stub: Stub, run_id: str, status: int) -> pb.ModelRecord | None:
    record = stub.GetModel(pb.GetModelRequest(model_id=run_id))
    return record if record.status == status else None


def test_a_run_is_running_in_the_store_and_a_client_cancel_stops_it(stub: Stub) -> None:
    call = stub.Train(train_request(name="to-cancel", **ENDLESS))
    started = next(call)
    assert started.HasField("started")
    running = stub.GetModel(pb.GetModelRequest(model_id=started.run_id))
    assert running.status == pb.RUN_STATUS_RUNNING and not running.has_weights and running.name == "to-cancel"
    failure = rpc_error(lambda: stub.Evaluate(pb.EvaluateRequest(model_id=started.run_id, input=batch(X))))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION and "still running" in failure.message
    call.cancel()
    record = wait_for(lambda: status_is(stub, started.run_id, pb.RUN_STATUS_CANCELLED), "the run to be stored cancelled")
    assert record.reason.startswith("the client cancelled the call after") and record.has_weights
    assert stub.Evaluate(pb.EvaluateRequest(model_id=started.run_id, input=batch(X))).output.shape == [5, 2]


def test_a_passed_deadline_stops_the_run(stub: Stub) -> None:
    call = stub.Train(train_request(name="deadline", **ENDLESS), timeout=1.5)
    failure = rpc_error(lambda: call)
    assert failure.code == grpc.StatusCode.DEADLINE_EXCEEDED
    run = wait_for(lambda: [m for m in stub.ListModels(pb.ListModelsRequest()).models if m.name == "deadline"], "the run's record")[0]
    record = wait_for(lambda: status_is(stub, run.id, pb.RUN_STATUS_CANCELLED), "the run to be stored cancelled")
    assert record.reason.startswith("the call's deadline passed after")


@pytest.fixture
def one_slot(tmp_path: Path) -> Iterator[RunningServer]:
    """One training at a time, each at most 2 s."""
    with serving(tmp_path / "store", max_concurrent_trains=1, max_train_seconds=2) as running:
        yield running


def test_a_full_pool_refuses_and_the_time_limit_ends_a_run_as_cancelled(one_slot: RunningServer) -> None:
    with connect(one_slot.address) as stub:
        first = stub.Train(train_request(**ENDLESS))
        run_id = next(first).run_id
        refused = rpc_error(lambda: stub.Train(train_request()))
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_concurrent_trains" in refused.message
        finished = [event for event in first][-1].finished  # the limit ends it; the stream closes normally
        assert finished.status == pb.RUN_STATUS_CANCELLED and "time limit of 2 s per run (max_train_seconds)" in finished.reason
        assert stub.GetModel(pb.GetModelRequest(model_id=run_id)).status == pb.RUN_STATUS_CANCELLED

        def admitted() -> list[pb.TrainEvent] | None:
            try:
                return list(stub.Train(train_request()))
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                return None

        assert wait_for(admitted, "the slot to free")[-1].finished.status == pb.RUN_STATUS_COMPLETED


def test_a_restarted_server_serves_the_stored_models_and_sigterm_stops_it_gracefully(tmp_path: Path) -> None:
    store, token = tmp_path / "store", (("authorization", "Bearer env-token"),)
    with serving(store) as first, connect(first.address) as stub:
        model_id = list(stub.Train(train_request()))[0].run_id
        before = to_numpy(stub.Evaluate(pb.EvaluateRequest(model_id=model_id, input=batch(X))).output)

    with server_process(store, env={"SPECBUILDER_TOKEN": "env-token"}) as process, connect(process.address) as stub:
        after = to_numpy(stub.Evaluate(pb.EvaluateRequest(model_id=model_id, input=batch(X)), metadata=token).output)
        np.testing.assert_array_equal(after, before)
        training = stub.Train(train_request(name="interrupted-by-stop", **ENDLESS), metadata=token)
        run_id = next(training).run_id
        assert next(training).HasField("progress")  # it has stepped: a run cancelled before its first step keeps no weights
        with open_channel(process.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()  # else the stop waits out its grace period for this stream
            finished = [event for event in training][-1].finished  # the stream ends normally, with the outcome
            assert finished.status == pb.RUN_STATUS_CANCELLED and finished.reason.startswith("the server is shutting down")
            assert process.stop() == 0
    with ModelStore(store) as opened:
        stopped = opened.get(run_id)
        assert (stopped.status, stopped.has_weights) == ("cancelled", True)


def test_serve_reports_what_keeps_it_from_starting(server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", str(server.port), "--store", str(tmp_path / "a")]) == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--store", str(tmp_path / "b"), "--tls-cert", "cert.pem"]) == 1
    assert "tls_cert and tls_key go together" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--store", str(tmp_path / "c"), "--tls-cert", "x.pem", "--tls-key", "y.pem"]) == 1
    assert "cannot read the TLS files" in capsys.readouterr().err


def test_connections_older_than_the_max_age_are_closed_between_calls_not_during_them(tmp_path: Path) -> None:
    """``max_connection_age_seconds``: gRPC sends GOAWAY and the channel goes idle, a training stream longer
    than the age runs to its end on the old connection, and the next call opens a new connection (where a
    client re-resolves the server's name)."""
    ready, idle = grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE
    with serving(tmp_path / "store", max_connection_age_seconds=0.3) as running, open_channel(running.address) as channel:
        states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(states.append, try_to_connect=True)
        stub = Stub(channel)
        events = list(stub.Train(train_request(**{**QUICK, "epochs": 60})))  # a second or more: several ages
        assert events[-1].finished.status == pb.RUN_STATUS_COMPLETED
        wait_for(lambda: idle in states[states.index(ready):], "the GOAWAY after the connection's age")
        answer = stub.Evaluate(pb.EvaluateRequest(model_id=events[0].run_id, input=batch(X)))
        assert to_numpy(answer.output).shape == (5, 2)
        wait_for(lambda: states.count(ready) == 2, "the call's new connection")  # callbacks come on gRPC's thread
        channel.unsubscribe(states.append)
