"""A catalog of bad requests, each with the exact status it must get and the field it must name.

Every INVALID_ARGUMENT also carries a ``google.rpc.BadRequest`` whose first field violation is
the path in the table. None of them is UNKNOWN or INTERNAL, none is logged as a server error,
and the server is still SERVING after all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server_helpers import SPIRALS, batch, config_values, connect, open_channel, rpc_error, serving, spec_source, train_request
from specbuilder_server import RunningServer
from specbuilder_server.errors import as_request_error
from specbuilder_wire.v1 import service_pb2 as pb
from specbuilder_wire.v1 import spec_pb2, tensor_pb2
from specbuilder_wire.v1.service_pb2_grpc import ModelServiceStub as Stub


INVALID, NOT_FOUND, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED
MISSING_ID = "0" * 32
IMAGE = {"input_shape": [784], "layers": [{"type": "linear", "out_features": 10}]}
BIG = {"input_shape": [1000], "layers": [{"type": "linear", "out_features": 1000}]}
X = np.zeros((4, 2), np.float32)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with small limits: 1 MB messages, 100k parameters, 5000-element batches."""
    with serving(tmp_path_factory.mktemp("store"), max_message_mb=1, max_params=100_000, max_batch_elements=5_000) as running:
        yield running


@pytest.fixture(scope="module")
def stub(limited: RunningServer) -> Iterator[Stub]:
    with connect(limited.address) as connected:
        yield connected


def evaluate(spec: dict[str, Any] = SPIRALS, input: Any = X, **options: Any) -> pb.EvaluateRequest:
    tensor = input if isinstance(input, tensor_pb2.Tensor) else batch(input)
    return pb.EvaluateRequest(spec=spec_source(spec), input=tensor, options=pb.EvaluateOptions(**options))


def stream(*messages: pb.StreamEvaluateRequest) -> Iterator[pb.StreamEvaluateRequest]:
    return iter(messages)


START = pb.StreamEvaluateRequest(start=pb.StreamEvaluateStart(spec=spec_source(SPIRALS)))


def batch_message(array: Any) -> pb.StreamEvaluateRequest:
    return pb.StreamEvaluateRequest(batch=batch(array))


def train_with(**fields: Any) -> pb.TrainRequest:
    """A quick spirals Train request with ``fields`` replaced (None clears one; ``config`` replaces the map)."""
    request = train_request()
    for key, value in fields.items():
        request.ClearField(key)
        if key == "config":
            for name, setting in value.items():
                request.config[name].CopyFrom(setting)
        elif value is not None:
            setattr(request, key, value)
    return request


Case = tuple[str, Callable[[Stub], Any], grpc.StatusCode, str]
"""(name, the call, the status it must get, the field path, or a phrase of the message where no field is at fault)."""

CATALOG: list[Case] = [
    ("no spec", lambda s: s.ValidateSpec(pb.ValidateSpecRequest()), INVALID, "spec"),
    ("bad style", lambda s: s.CompileSpec(pb.CompileSpecRequest(spec=spec_source(SPIRALS), style="graph")), INVALID, "style"),
    ("invalid spec", lambda s: s.CompileSpec(pb.CompileSpecRequest(spec=spec_source({"input_shape": [2], "layers": [{"type": "relu7"}]}))), INVALID, "layers[0].type"),
    ("spec JSON that is no JSON", lambda s: s.CompileSpec(pb.CompileSpecRequest(spec=pb.SpecSource(json="{layers: ["))), INVALID, ""),
    ("empty Value in a spec message", lambda s: s.CompileSpec(pb.CompileSpecRequest(spec=pb.SpecSource(spec=spec_pb2.ModelSpec(
        input_shape=[2], layers=[spec_pb2.Layer(type="linear", params={"out_features": spec_pb2.Value()})])))), INVALID, "layers[0].out_features"),
    ("too many parameters", lambda s: s.CompileSpec(pb.CompileSpecRequest(spec=spec_source(BIG))), EXHAUSTED, "layers"),
    ("evaluate without a model", lambda s: s.Evaluate(pb.EvaluateRequest(input=batch(X))), INVALID, "model"),
    ("evaluate without input", lambda s: s.Evaluate(pb.EvaluateRequest(spec=spec_source(SPIRALS))), INVALID, "input"),
    ("image batch for a flat input", lambda s: s.Evaluate(evaluate(IMAGE, np.zeros((3, 28, 28), np.float32))), INVALID, "input.shape"),
    ("one sample without a batch dimension", lambda s: s.Evaluate(evaluate(SPIRALS, np.zeros(2, np.float32))), INVALID, "input.shape"),
    ("empty batch", lambda s: s.Evaluate(evaluate(SPIRALS, np.zeros((0, 2), np.float32))), INVALID, "input.shape"),
    ("bytes that do not fit the shape", lambda s: s.Evaluate(evaluate(SPIRALS, tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[4, 2], data=b"\0" * 31))), INVALID, "input.data"),
    ("unset dtype", lambda s: s.Evaluate(evaluate(SPIRALS, tensor_pb2.Tensor(shape=[1, 2], data=b"\0" * 8))), INVALID, "input.dtype"),
    ("negative size", lambda s: s.Evaluate(evaluate(SPIRALS, tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[-1, 2]))), INVALID, "input.shape"),
    ("shared memory on a server without it", lambda s: s.Evaluate(evaluate(SPIRALS, tensor_pb2.Tensor(
        dtype=tensor_pb2.DTYPE_FLOAT32, shape=[1, 2], shared_memory=tensor_pb2.SharedMemoryRef(name="specbuilder_x")))), INVALID, "input.shared_memory"),
    ("unknown layer to monitor", lambda s: s.Evaluate(evaluate(statistics=True, layers=["out", "fc9"])), INVALID, "options.layers[1]"),
    ("negative bins", lambda s: s.Evaluate(evaluate(statistics=True, bins=-1)), INVALID, "options.bins"),
    ("batch over the element limit", lambda s: s.Evaluate(evaluate(SPIRALS, np.zeros((400, 2), np.float32))), EXHAUSTED, "max_batch_elements"),
    ("message over the size limit", lambda s: s.Evaluate(evaluate(SPIRALS, np.zeros((200_000, 2), np.float32))), EXHAUSTED, "larger than max"),
    ("malformed model id", lambda s: s.Evaluate(pb.EvaluateRequest(model_id="../../etc/passwd", input=batch(X))), INVALID, "model_id"),
    ("unknown model id", lambda s: s.Evaluate(pb.EvaluateRequest(model_id=MISSING_ID, input=batch(X))), NOT_FOUND, MISSING_ID),
    ("get an unknown model", lambda s: s.GetModel(pb.GetModelRequest(model_id=MISSING_ID)), NOT_FOUND, MISSING_ID),
    ("get without an id", lambda s: s.GetModel(pb.GetModelRequest()), INVALID, "model_id"),
    ("delete an unknown model", lambda s: s.DeleteModel(pb.DeleteModelRequest(model_id=MISSING_ID)), NOT_FOUND, MISSING_ID),
    ("export a malformed id", lambda s: s.ExportModel(pb.ExportModelRequest(model_id="ABC")), INVALID, "model_id"),
    ("list by an unknown status", lambda s: s.ListModels(pb.ListModelsRequest(status=99)), INVALID, "status"),
    ("empty stream", lambda s: s.StreamEvaluate(stream()), INVALID, "start"),
    ("stream that starts with a batch", lambda s: s.StreamEvaluate(stream(batch_message(X))), INVALID, "start"),
    ("stream with a second start", lambda s: s.StreamEvaluate(stream(START, batch_message(X), START)), INVALID, "batch[1]"),
    ("stream with a bad batch", lambda s: s.StreamEvaluate(stream(START, batch_message(X), batch_message(np.zeros((2, 3), np.float32)))), INVALID, "batch[1].shape"),
    ("stream without a model", lambda s: s.StreamEvaluate(stream(pb.StreamEvaluateRequest(start=pb.StreamEvaluateStart()))), INVALID, "start.model"),
    ("stream a malformed model id", lambda s: s.StreamEvaluate(stream(pb.StreamEvaluateRequest(start=pb.StreamEvaluateStart(model_id="ABC")))),
     INVALID, "start.model_id"),
    ("stream an empty spec source", lambda s: s.StreamEvaluate(stream(pb.StreamEvaluateRequest(start=pb.StreamEvaluateStart(spec=pb.SpecSource())))),
     INVALID, "start.spec"),
    ("stream options naming no layer", lambda s: s.StreamEvaluate(stream(pb.StreamEvaluateRequest(start=pb.StreamEvaluateStart(
        spec=spec_source(SPIRALS), options=pb.EvaluateOptions(statistics=True, layers=["nope"]))))), INVALID, "start.options.layers[0]"),
    ("train without data", lambda s: s.Train(train_with(dataset=None)), INVALID, "data"),
    ("train on a server file", lambda s: s.Train(train_with(dataset="/etc/passwd.npz")), INVALID, "dataset"),
    ("train with a bad learning rate", lambda s: s.Train(train_with(config=config_values({"lr": -1.0}))), INVALID, "config.lr"),
    ("train with an unknown setting", lambda s: s.Train(train_with(config=config_values({"epoch": 3}))), INVALID, "config.epoch"),
    ("train with an empty Value", lambda s: s.Train(train_with(config={"lr": spec_pb2.Value()})), INVALID, "config.lr"),
    ("train with a bad optimizer parameter", lambda s: s.Train(train_with(config=config_values({"optimizer": "sgd", "optimizer.momentum": 1.5}))), INVALID, "config.optimizer.momentum"),
    ("train with a loss the model cannot feed", lambda s: s.Train(train_with(config=config_values({"loss": "bce"}))), INVALID, "config.loss"),
    ("train on several ranks", lambda s: s.Train(train_with(config=config_values({"world_size": 2}))), INVALID, "config.world_size"),
    ("train with a bad name", lambda s: s.Train(train_with(name="../escape")), INVALID, "name"),
    ("train arrays of different lengths", lambda s: s.Train(pb.TrainRequest(spec=spec_source(SPIRALS), arrays=pb.TrainArrays(
        x=batch(np.zeros((10, 2), np.float32)), y=batch(np.zeros(9, np.int64))))), INVALID, "arrays"),
    ("train arrays that do not fit the spec", lambda s: s.Train(pb.TrainRequest(spec=spec_source(SPIRALS), arrays=pb.TrainArrays(
        x=batch(np.zeros((10, 3), np.float32)), y=batch(np.zeros(10, np.int64))))), INVALID, "arrays"),
    ("train arrays without y", lambda s: s.Train(pb.TrainRequest(spec=spec_source(SPIRALS), arrays=pb.TrainArrays(x=batch(X)))), INVALID, "arrays.y"),
]


@pytest.mark.parametrize(("name", "call", "code", "where"), CATALOG, ids=[case[0] for case in CATALOG])
def test_a_bad_request_gets_its_status_and_names_the_field(stub: Stub, name: str, call: Callable[[Stub], Any], code: grpc.StatusCode,
                                                         where: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="specbuilder_server"):
        failure = rpc_error(lambda: call(stub))
    assert failure.code == code, failure.message
    if code == INVALID:
        assert failure.fields and failure.fields[0] == where, (failure.fields, failure.message)
        assert failure.message.startswith(f"{where}: " if where else "") and len(failure.message) > len(where) + 10
    else:
        assert where in failure.message
    assert "()" not in failure.message, f"names a Python function, not a wire field: {failure.message}"
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_messages_say_what_to_do(stub: Stub) -> None:
    image = rpc_error(lambda: stub.Evaluate(evaluate(IMAGE, np.zeros((32, 28, 28), np.float32))))
    assert image.message == (
        "input.shape: expected [N, 784] (a batch of the spec's input_shape [784]), got [32, 28, 28]: "
        "reshape it to [32, 784], or set the spec's input_shape to [28, 28]"
    )
    limit = rpc_error(lambda: stub.Evaluate(evaluate(SPIRALS, np.zeros((400, 2), np.float32))))
    assert "send at most 312 samples per batch" in limit.message
    spec = rpc_error(lambda: stub.CompileSpec(pb.CompileSpecRequest(spec=spec_source({"input_shape": [2], "layers": [{"type": "relu7"}]}))))
    assert "did you mean" in spec.message
    malformed = rpc_error(lambda: stub.GetModel(pb.GetModelRequest(model_id="0123")))
    assert malformed.message == "model_id: must be 32 lowercase hexadecimal digits (a ModelRecord.id), got '0123'"


def test_still_serving_after_the_whole_catalog(limited: RunningServer, stub: Stub) -> None:
    for _, call, _, _ in CATALOG:
        rpc_error(lambda: call(stub))
    with open_channel(limited.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert stub.Evaluate(evaluate()).output.shape == [4, 2]


def test_an_unexpected_failure_is_internal_short_and_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise RuntimeError("the disk caught fire at /srv/secret/path")
    except RuntimeError as error:
        failure = error
    with caplog.at_level(logging.ERROR, logger="specbuilder_server"):
        answer = as_request_error(failure)
    assert answer.code == grpc.StatusCode.INTERNAL and not answer.problems
    assert answer.message == "internal error (RuntimeError); the server's log has the details"  # nothing internal leaks
    assert [record.exc_info[1] for record in caplog.records] == [failure]
