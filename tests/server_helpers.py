"""Real specbuilder servers for tests: in-process or as a subprocess, on 127.0.0.1 and a free port.

Import what a test file needs (fixtures register by being imported into the test module)::

    from server_helpers import server, stub                  # fixtures
    from server_helpers import serving, server_process, spec_source, rpc_error

- ``server``: a module-scoped in-process ``RunningServer`` over a fresh store (defaults, no token).
- ``stub``: a ``ModelServiceStub`` on a plaintext channel to ``server``.
- ``connect(address)`` / ``open_channel(address)``: a stub / a channel (TLS when given credentials).
- ``serving(store, **settings)``: a context manager for a server with other ``ServerConfig``
  settings (token, TLS, limits; device cpu, 8 workers, 2 s grace); stopped when the block ends.
- ``server_process(store, *flags)``: ``python -m specbuilder serve --port 0 --store DIR`` in a
  subprocess, the port read from its ``listening on HOST:PORT`` line; SIGTERM when the block ends.
- ``spec_source(spec)``: a ``SpecSource`` holding a spec dict as JSON; ``SPIRALS`` is a small
  classifier for the built-in ``spirals`` dataset; ``batch(array)`` a wire tensor.
- ``train_request(spec, dataset, name, **settings)``: a Train request; ``QUICK`` settings finish
  in well under a second, ``ENDLESS`` ones only end when cancelled; ``config_values(settings)``.
- ``rpc_error(call)``: the ``grpc.RpcError`` a call raises, with its BadRequest field paths;
  ``answer(call)``: any call's status name, message and result, without raising.
- ``wait_for(check)``: poll a condition until it holds (a bounded wait, never a timing check).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with default settings over a fresh store, shared by a test module."""
    with serving(tmp_path_factory.mktemp("store")) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[service_pb2_grpc.ModelServiceStub]:
    """A stub on a plaintext channel to ``server``."""
    with connect(server.address) as connected:
        yield connected


@dataclass
class ServerProcess:
    """A ``specbuilder serve`` subprocess and where it listens."""

    process: subprocess.Popen[str]
    port: int
    banner: str
    """Its ``listening on ...`` line, which says what protects it."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def terminate(self) -> None:
        """Send SIGTERM: the server stops gracefully (``exit_code`` waits for it)."""
        self.process.send_signal(signal.SIGTERM)

    def exit_code(self) -> int:
        """Wait for the process to end; its exit code."""
        return self.process.wait(WAIT_SECONDS)


@contextmanager
def server_process(store: Path | str, *flags: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """``python -m specbuilder serve --port 0 --store STORE *flags`` (a directory or a URL); waits for its ``listening on`` line."""
    command = [sys.executable, "-m", "specbuilder", "serve", "--port", "0", "--store", str(store), "--device", "cpu", "--grace", "2", *flags]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    try:
        line = process.stdout.readline() if process.stdout else ""
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not found:
            process.kill()
            raise AssertionError(f"the server did not start: {line!r} {process.communicate()[1][-2000:]}")
        running = ServerProcess(process, int(found.group(1)), line)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key
