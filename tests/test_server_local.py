"""The local socket: shared-memory Evaluate calls leave gRPC for a Unix socket, with the same answers,
the same errors, the same tokens and roles, and gRPC again whenever the socket is gone."""

from __future__ import annotations

import socket
import threading
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server_helpers import SPIRALS, connect, open_channel, serving, spec_source, wait_for
from specbuilder_client import Client, DeadlineExceeded, InvalidArgument, NotFound, SpecbuilderError
from specbuilder_server import RunningServer, local_socket, roles
from specbuilder_wire.localsocket import CLOSE, EVALUATE, HELLO, OK, STATUS, STREAM, hello, read_head, read_payload, send_frame
from specbuilder_wire.v1 import service_pb2, tensor_pb2

TOKEN = "local-socket-token"
INFERENCE_TOKEN = "local-socket-inference-token"
X = np.random.default_rng(5).normal(size=(64, 2)).astype(np.float32)
CONNECTIONS = 8
"""The local socket's connection limit (the server's ``max_streams``) in these tests."""


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("store"), shared_memory=True, tokens=(TOKEN,), inference_tokens=(INFERENCE_TOKEN,),
                 max_streams=CONNECTIONS) as server:
        yield server


@pytest.fixture(scope="module")
def trusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server that also reads shared memory named in gRPC calls (single-tenant)."""
    with serving(tmp_path_factory.mktemp("store"), shared_memory=True, shared_memory_over_grpc=True, tokens=(TOKEN,)) as server:
        yield server


def raw_connection(server: RunningServer) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(30)
    assert server.local_socket is not None
    connection.connect(server.local_socket)
    return connection


def exchange(connection: socket.socket, kind: int, payload: bytes) -> tuple[int, bytes]:
    send_frame(connection, kind, payload)
    got, length = read_head(connection)
    return got, read_payload(connection, length)


def status_of(payload: bytes) -> tuple[grpc.StatusCode, str]:
    status = status_pb2.Status.FromString(payload)
    return next(code for code in grpc.StatusCode if code.value[0] == status.code), status.message


def closed(connection: socket.socket) -> bool:
    """True if the server has closed ``connection`` (a reset: it left a refused frame unread)."""
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


def test_shared_memory_calls_move_to_the_local_socket_with_the_same_answers(running: RunningServer) -> None:
    with Client(running.address, token=TOKEN, shared_memory=True) as local, Client(running.address, token=TOKEN) as inline:
        first = local.evaluate(SPIRALS, X, statistics=True)  # over gRPC: its answer names the socket
        assert local.local_socket == running.local_socket
        second = local.evaluate(SPIRALS, X, statistics=True)
        expected = inline.evaluate(SPIRALS, X, statistics=True)
        for result in (first, second):
            np.testing.assert_array_equal(result.outputs, expected.outputs)
            assert result.stats == expected.stats and result.compute_seconds > 0


@pytest.mark.parametrize(("model", "x", "error", "paths"), [
    (SPIRALS, X[:, :1], InvalidArgument, ["input.shape"]),
    (SPIRALS, X.astype(np.int64)[:0], InvalidArgument, ["input.shape"]),
    ({**SPIRALS, "layers": [{"type": "relu7"}]}, X, InvalidArgument, ["layers[0].type"]),
    ("0123456789abcdef0123456789abcdef", X, NotFound, []),
])
def test_failures_on_the_local_socket_are_the_errors_grpc_gives(trusting: RunningServer, model: object, x: np.ndarray,
                                                               error: type[SpecbuilderError], paths: list[str]) -> None:
    failures = []
    with Client(trusting.address, token=TOKEN, shared_memory=True) as local, \
            Client(trusting.address, token=TOKEN, shared_memory=True, local_socket=False) as remote:
        local.evaluate(SPIRALS, X)
        for client in (local, remote):
            with pytest.raises(error) as caught:
                client.evaluate(model, x)  # type: ignore[arg-type]
            failures.append((caught.value.code, caught.value.message, caught.value.violations))
        assert local.local_socket is not None and remote.local_socket is None
        assert local.evaluate(SPIRALS, X).outputs.shape == (len(X), 2)  # a failed call leaves the connection usable
    assert failures[0] == failures[1]
    assert [v.path for v in failures[0][2]] == paths


def test_the_socket_sits_in_a_private_folder_that_goes_with_the_server(tmp_path: Path) -> None:
    with serving(tmp_path / "store", shared_memory=True) as server:
        assert server.local_socket is not None
        path = Path(server.local_socket)
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not path.parent.exists()
    with serving(tmp_path / "plain", shared_memory=True, shared_memory_over_grpc=True, local_socket=False) as server, \
            Client(server.address, shared_memory=True) as client:
        client.evaluate(SPIRALS, X)
        client.evaluate(SPIRALS, X)
        assert server.local_socket is None and client.local_socket is None


def evaluate_request() -> bytes:
    return service_pb2.EvaluateRequest(spec=spec_source(SPIRALS), input=tensor_pb2.Tensor(
        dtype=tensor_pb2.DTYPE_FLOAT32, shape=X.shape, data=X.tobytes())).SerializeToString()


@pytest.mark.parametrize(("first", "code", "words"), [
    ((HELLO, hello("not-it")), grpc.StatusCode.UNAUTHENTICATED, "not one of this server's tokens"),
    ((HELLO, hello(None)), grpc.StatusCode.UNAUTHENTICATED, "needs a token"),
    ((HELLO, b"other-protocol/9\0" + TOKEN.encode()), grpc.StatusCode.FAILED_PRECONDITION, "specbuilder-local/1"),
    ((EVALUATE, evaluate_request()), grpc.StatusCode.INVALID_ARGUMENT, "hello"),
    ((HELLO, b"x" * 5000), grpc.StatusCode.INVALID_ARGUMENT, "hello"),
])
def test_a_connection_without_the_right_hello_is_refused_and_closed(running: RunningServer, first: tuple[int, bytes],
                                                                    code: grpc.StatusCode, words: str) -> None:
    with raw_connection(running) as connection:
        kind, payload = exchange(connection, *first)
        assert kind == STATUS and status_of(payload)[0] == code and words in status_of(payload)[1]
        assert closed(connection)


def test_the_local_socket_admits_the_roles_the_table_lets_call_evaluate(running: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(running.address, token=INFERENCE_TOKEN, shared_memory=True) as client:
        client.evaluate(SPIRALS, X)
        assert client.local_socket == running.local_socket and client.evaluate(SPIRALS, X).outputs.shape == (len(X), 2)
    monkeypatch.setattr(roles, "ROLES", {})  # were Evaluate not listed for inference tokens
    with raw_connection(running) as connection:
        kind, payload = exchange(connection, HELLO, hello(INFERENCE_TOKEN))
        code, message = status_of(payload)
        assert (kind, code) == (STATUS, grpc.StatusCode.PERMISSION_DENIED) and "Evaluate needs the full-access role" in message
    with raw_connection(running) as connection:
        assert exchange(connection, HELLO, hello(TOKEN)) == (OK, b"")


def test_bad_frames_after_the_hello_get_statuses_and_the_server_keeps_serving(running: RunningServer) -> None:
    with raw_connection(running) as connection:
        assert exchange(connection, HELLO, hello(TOKEN)) == (OK, b"")
        kind, payload = exchange(connection, EVALUATE, b"\xff\xff\xff")  # not a message: the connection stays
        assert kind == STATUS and status_of(payload) == (grpc.StatusCode.INVALID_ARGUMENT, "the request is not a serialized specbuilder.v1.EvaluateRequest: its bytes do not parse")
        kind, payload = exchange(connection, EVALUATE, evaluate_request())
        assert kind == OK and service_pb2.EvaluateResponse.FromString(payload).output.shape == [len(X), 2]
        kind, payload = exchange(connection, HELLO, hello(TOKEN))  # a second hello: closed
        assert kind == STATUS and status_of(payload)[0] == grpc.StatusCode.INVALID_ARGUMENT and closed(connection)
    with raw_connection(running) as connection:
        assert exchange(connection, HELLO, hello(TOKEN)) == (OK, b"")
        connection.sendall(bytes([EVALUATE]) + (2**31).to_bytes(4, "little"))  # over the 64 MB limit: refused unread
        kind, length = read_head(connection)
        assert kind == STATUS and status_of(read_payload(connection, length))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert closed(connection)
    with open_channel(running.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_connections_over_the_limit_are_refused(running: RunningServer) -> None:
    connections = [raw_connection(running) for _ in range(CONNECTIONS)]
    try:
        for connection in connections:
            assert exchange(connection, HELLO, hello(TOKEN)) == (OK, b"")
        with raw_connection(running) as extra:
            kind, length = read_head(extra)
            assert kind == STATUS and status_of(read_payload(extra, length))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for connection in connections:
            connection.close()


def test_a_timeout_on_the_local_socket_is_deadline_exceeded_and_the_next_call_works(running: RunningServer) -> None:
    big = np.random.default_rng(6).normal(size=(400_000, 2)).astype(np.float32)
    with Client(running.address, token=TOKEN, shared_memory=True) as client:
        client.evaluate(SPIRALS, X)
        assert client.local_socket is not None
        with pytest.raises(DeadlineExceeded):
            client.evaluate(SPIRALS, big, timeout=1e-4, statistics=True)
        assert client.evaluate(SPIRALS, X).outputs.shape == (len(X), 2)
        assert client.evaluate(SPIRALS, X).outputs.shape == (len(X), 2)
        assert client.local_socket is not None


def test_when_the_socket_goes_the_call_goes_over_grpc(tmp_path: Path) -> None:
    with serving(tmp_path / "store", shared_memory=True, shared_memory_over_grpc=True) as server, Client(server.address, shared_memory=True) as client:
        expected = client.evaluate(SPIRALS, X).outputs
        assert client.local_socket is not None
        server._loop.run(server._local.close(0))  # type: ignore[union-attr] - the socket alone stops; gRPC still serves
        np.testing.assert_array_equal(client.evaluate(SPIRALS, X).outputs, expected)
        assert client.local_socket is None
        np.testing.assert_array_equal(client.evaluate(SPIRALS, X).outputs, expected)


def test_concurrent_clients_and_threads_on_the_local_socket_all_get_their_own_answers(running: RunningServer) -> None:
    rng = np.random.default_rng(8)
    batches = [rng.normal(size=(int(n), 2)).astype(np.float32) for n in rng.integers(1, 300, size=8)]
    with Client(running.address, token=TOKEN) as inline:
        expected = [inline.evaluate(SPIRALS, x).outputs for x in batches]
    clients = [Client(running.address, token=TOKEN, shared_memory=True) for _ in range(3)]
    failures: list[str] = []

    def work(client: Client, offset: int) -> None:
        for round_ in range(10):
            index = (offset + round_) % len(batches)
            got = client.evaluate(SPIRALS, batches[index]).outputs
            if not np.array_equal(got, expected[index]):
                failures.append(f"batch {index} came back wrong")

    try:
        threads = [threading.Thread(target=work, args=(client, offset)) for offset, client in
                   enumerate([client for client in clients for _ in range(2)])]  # two threads share each client
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads) and not failures
        assert all(client.local_socket == running.local_socket for client in clients)
    finally:
        for client in clients:
            client.close()


def test_a_connection_that_never_says_hello_is_closed(running: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_socket, "HELLO_SECONDS", 0.2)
    with raw_connection(running) as silent:
        assert closed(silent), "the server let a silent connection hold its slot"
    with raw_connection(running) as connection:  # the slot is free again
        assert exchange(connection, HELLO, hello(TOKEN)) == (OK, b"")


def stream_start(spec: dict[str, object] = SPIRALS) -> bytes:
    return service_pb2.StreamEvaluateRequest(start=service_pb2.StreamEvaluateStart(spec=spec_source(spec))).SerializeToString()


def stream_batch(x: np.ndarray) -> bytes:
    return service_pb2.StreamEvaluateRequest(batch=tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=x.shape, data=x.tobytes())).SerializeToString()


def test_a_stream_of_frames_is_answered_batch_by_batch_then_summed_up_and_the_connection_goes_on(running: RunningServer) -> None:
    with raw_connection(running) as connection:
        assert exchange(connection, HELLO, hello(INFERENCE_TOKEN)) == (OK, b"")
        send_frame(connection, STREAM, stream_start())
        for part in (X[:10], X[10:]):  # sent without waiting for answers: inline batches are read as gRPC reads them
            send_frame(connection, STREAM, stream_batch(part))
        send_frame(connection, CLOSE, b"")
        answers = []
        for _ in range(3):
            kind, length = read_head(connection)
            assert kind == OK
            answers.append(service_pb2.StreamEvaluateResponse.FromString(read_payload(connection, length)))
        assert [a.output.batch_index for a in answers[:2]] == [0, 1] and answers[2].summary.rows == len(X)
        kind, payload = exchange(connection, EVALUATE, evaluate_request())  # the connection serves the next call
        assert kind == OK and service_pb2.EvaluateResponse.FromString(payload).output.shape == [len(X), 2]


def test_a_stream_needs_a_role_that_may_stream_and_a_bad_one_ends_with_its_status_and_the_connection(running: RunningServer,
                                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    evaluate_only = {path: role for path, role in roles.ROLES.items() if not path.endswith("/StreamEvaluate")}
    monkeypatch.setattr(roles, "ROLES", evaluate_only)  # were StreamEvaluate not listed for inference tokens
    with raw_connection(running) as connection:
        assert exchange(connection, HELLO, hello(INFERENCE_TOKEN)) == (OK, b"")
        kind, payload = exchange(connection, STREAM, stream_start())
        code, message = status_of(payload)
        assert (kind, code) == (STATUS, grpc.StatusCode.PERMISSION_DENIED) and "StreamEvaluate needs the full-access role" in message
        assert closed(connection)
    monkeypatch.undo()
    with raw_connection(running) as connection:
        assert exchange(connection, HELLO, hello(TOKEN)) == (OK, b"")
        send_frame(connection, STREAM, stream_start())
        kind, payload = exchange(connection, EVALUATE, evaluate_request())  # an Evaluate frame inside a stream
        assert (kind, status_of(payload)[0]) == (STATUS, grpc.StatusCode.INVALID_ARGUMENT) and "in a stream" in status_of(payload)[1]
        assert closed(connection)
    with raw_connection(running) as connection:
        assert exchange(connection, HELLO, hello(TOKEN)) == (OK, b"")
        send_frame(connection, STREAM, stream_start())
        connection.sendall(bytes([STREAM]) + (2**31).to_bytes(4, "little"))  # over the message limit: refused unread
        kind, length = read_head(connection)
        assert kind == STATUS and status_of(read_payload(connection, length))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert closed(connection)
    wait_for(lambda: not len(running.servicer.streams), "the refused streams' slots")


def test_a_local_stream_that_goes_quiet_is_ended_and_streams_count_against_the_servers_cap(tmp_path: Path) -> None:
    with serving(tmp_path / "store", shared_memory=True, stream_idle_seconds=0.5, max_streams=2) as server:
        with raw_connection(server) as quiet:
            assert exchange(quiet, HELLO, hello(None)) == (OK, b"")
            kind, payload = exchange(quiet, STREAM, stream_start())  # then nothing
            assert (kind, status_of(payload)[0]) == (STATUS, grpc.StatusCode.DEADLINE_EXCEEDED) and "stream_idle_seconds" in status_of(payload)[1]
            assert closed(quiet)
        wait_for(lambda: not len(server.servicer.streams), "the quiet stream's slot")
        release = threading.Event()

        def held_open() -> Iterator[service_pb2.StreamEvaluateRequest]:
            yield service_pb2.StreamEvaluateRequest(start=service_pb2.StreamEvaluateStart(spec=spec_source(SPIRALS)))
            release.wait(30)

        with connect(server.address) as stub, raw_connection(server) as first, raw_connection(server) as second:
            over_grpc = stub.StreamEvaluate(held_open())  # one slot
            wait_for(lambda: len(server.servicer.streams) == 1, "the gRPC stream's slot")
            for connection in (first, second):
                assert exchange(connection, HELLO, hello(None)) == (OK, b"")
            send_frame(first, STREAM, stream_start())
            assert exchange(first, STREAM, stream_batch(X))[0] == OK  # the other slot
            kind, payload = exchange(second, STREAM, stream_start())
            assert (kind, status_of(payload)[0]) == (STATUS, grpc.StatusCode.RESOURCE_EXHAUSTED) and "(max_streams)" in status_of(payload)[1]
            release.set()
            assert list(over_grpc)[-1].HasField("summary")
