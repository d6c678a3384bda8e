"""Real specbuilder servers for tests: in-process or as a subprocess, on 127.0.0.1 and a free port.

The fixtures ``server``, ``stub`` and ``certificate`` live in ``conftest.py``; import the rest::

    from server_helpers import serving, server_process, spec_source, rpc_error

- ``connect(address)`` / ``open_channel(address)``: a stub / a channel (TLS when given credentials).
- ``serving(store, **settings)``: a context manager for a server with other ``ServerConfig``
  settings (tokens, TLS, limits; device cpu, 8 workers, 2 s grace); stopped when the block ends.
- ``server_process(store, *flags)``: ``specbuilder serve`` in a subprocess
  (``specbuilder.demo.server.serve_subprocess``) as the tests run it; SIGTERM when the block ends.
- ``spec_source(spec)``: a ``SpecSource`` holding a spec dict as JSON; ``SPIRALS`` is a small
  classifier for the built-in ``spirals`` dataset; ``batch(array)`` a wire tensor.
- ``train_request(spec, dataset, name, **settings)``: a Train request; ``QUICK`` settings finish
  in well under a second, ``ENDLESS`` ones only end when cancelled; ``config_values(settings)``.
- ``certificate``: a self-signed server certificate and key; ``pki``: a CA, a server and a client
  certificate it signs, and a stranger's client certificate (``Pki``; made by ``certificates``).
- ``invoke(channel, method, request, metadata)``: any RPC called by its descriptor (so a test can
  cover every RPC of the service); ``message_class(descriptor)`` a message type's class.
- ``rpc_error(call)``: the ``grpc.RpcError`` a call raises, with its BadRequest field paths;
  ``answer(call)``: any call's status name, message and result, without raising.
- ``counted(server, method)``: the calls the servicer ran (a refused call never reaches it).
- ``wait_for(check)``: poll a condition until it holds (a bounded wait, never a timing check).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from specbuilder.demo.server import ServerProcess, serve_subprocess
from specbuilder_server import RunningServer, ServerConfig, start_server
from specbuilder_wire.arrays import to_proto
from specbuilder_wire.v1 import service_pb2, service_pb2_grpc, tensor_pb2

ROOT = Path(__file__).resolve().parent.parent
SPIRALS: dict[str, Any] = {
    "name": "spirals-mlp",
    "input_shape": [2],
    "layers": [
        {"type": "linear", "out_features": 16, "name": "fc1", "activation": "tanh"},
        {"type": "linear", "out_features": 2, "name": "out"},
    ],
}
"""A tiny classifier for the built-in ``spirals`` dataset (2 features, 2 classes)."""
QUICK = {"epochs": 2, "batch_size": 64}
"""Training settings that finish in well under a second."""
ENDLESS = {"epochs": 1_000_000, "batch_size": 8}
"""Training settings that only a cancel ends."""
WAIT_SECONDS = 30.0
"""The longest ``wait_for`` polls before failing the test (a hang, not a slow machine)."""


def spec_source(spec: dict[str, Any]) -> service_pb2.SpecSource:
    """A spec dict as a ``SpecSource`` (JSON text)."""
    return service_pb2.SpecSource(json=json.dumps(spec))


def batch(array: Any) -> tensor_pb2.Tensor:
    """A numpy-convertible array as a wire tensor."""
    return to_proto(np.asarray(array))


def config_values(settings: dict[str, Any]) -> dict[str, Any]:
    """Training settings as ``TrainRequest.config`` values."""
    from specbuilder_wire.values import encode_value

    return {key: encode_value(value, key) for key, value in settings.items()}


def train_request(spec: dict[str, Any] = SPIRALS, dataset: str = "spirals", name: str = "", **settings: Any) -> service_pb2.TrainRequest:
    """A Train request for ``spec`` on a built-in dataset with TrainConfig ``settings`` (``QUICK`` when none are given)."""
    return service_pb2.TrainRequest(spec=spec_source(spec), dataset=dataset, name=name, config=config_values(settings or QUICK))


def message_class(descriptor: Descriptor) -> type[Any]:
    """The Python class of a message type, by its descriptor (an RPC's ``input_type``)."""
    return message_factory.GetMessageClass(descriptor)


def invoke(channel: grpc.Channel, method: MethodDescriptor, request: Any, metadata: Sequence[tuple[str, str]]) -> Any:
    """Call a ModelService ``method`` by its descriptor with one request message, reading a response stream to its end."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    wire = {"request_serializer": type(request).SerializeToString, "response_deserializer": message_class(method.output_type).FromString}
    if method.client_streaming and method.server_streaming:
        return list(channel.stream_stream(path, **wire)(iter([request]), metadata=metadata, timeout=30))
    if method.client_streaming:
        return channel.stream_unary(path, **wire)(iter([request]), metadata=metadata, timeout=30)
    if method.server_streaming:
        return list(channel.unary_stream(path, **wire)(request, metadata=metadata, timeout=30))
    return channel.unary_unary(path, **wire)(request, metadata=metadata, timeout=30)


@dataclass
class Failure:
    """What a failed call said: its code, message and the BadRequest field paths."""

    code: grpc.StatusCode
    message: str
    fields: list[str]


def rpc_error(call: Callable[[], Any]) -> Failure:
    """Run ``call`` (which must fail), consuming a response stream if it returns one."""
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)) and not hasattr(result, "ListFields"):
            for _ in result:
                pass
    error = caught.value
    status = rpc_status.from_call(error)
    fields: list[str] = []
    if status is not None:
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                fields.extend(v.field for v in bad.field_violations)
    return Failure(error.code(), error.details() or "", fields)


def answer(call: Callable[[], Any]) -> tuple[str, str, Any]:
    """A call's status name, its message and what it returned (a response stream read to the end); never raises for a status."""
    try:
        result = call()
        if not hasattr(result, "ListFields"):
            result = list(result)
    except grpc.RpcError as error:
        return error.code().name, error.details() or "", None
    return "OK", "", result


def counted(server: RunningServer, method: str | None = None) -> float:
    """How many ModelService calls (of ``method``, else of every method) the server's servicer has run, however they ended.
    A call is counted as it ends, which may be just after its client has its status."""
    families = server.servicer.metrics.registry.collect()
    return sum(sample.value for family in families if family.name == "specbuilder_rpc" for sample in family.samples
               if sample.name == "specbuilder_rpc_total" and method in (None, sample.labels["method"]))


def wait_for(check: Callable[[], Any], what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``WAIT_SECONDS``."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what} after {WAIT_SECONDS:g} s")


@contextmanager
def serving(store: Path, **settings: Any) -> Iterator[RunningServer]:
    """An in-process server on 127.0.0.1 and a free port, over ``store``; stopped when the block ends."""
    server = start_server(ServerConfig(host="127.0.0.1", port=0, store=store, device="cpu", workers=8, grace_seconds=2.0, **settings))
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def open_channel(address: str, credentials: grpc.ChannelCredentials | None = None, **options: Any) -> Iterator[grpc.Channel]:
    """A channel to ``address`` (TLS with ``credentials``; ``options`` are grpc channel arguments), closed after the block."""
    pairs = list(options.items())
    with grpc.secure_channel(address, credentials, pairs) if credentials else grpc.insecure_channel(address, pairs) as channel:
        yield channel


@contextmanager
def connect(address: str, credentials: grpc.ChannelCredentials | None = None, **options: Any) -> Iterator[service_pb2_grpc.ModelServiceStub]:
    """A ``ModelServiceStub`` on ``open_channel(address, credentials, **options)``."""
    with open_channel(address, credentials, **options) as channel:
        yield service_pb2_grpc.ModelServiceStub(channel)


def server_process(store: Path | str, *flags: str, env: Mapping[str, str] | None = None,
                   log: Path | None = None) -> AbstractContextManager[ServerProcess]:
    """``serve_subprocess`` as the tests run it: on the CPU, 2 s of grace, one OpenMP thread (``flags``
    given after these win); a store URL needs ``log``, where the server's stderr goes."""
    return serve_subprocess(store, "--device", "cpu", "--grace", "2", *flags, env={"OMP_NUM_THREADS": "1", **(env or {})}, log=log)
