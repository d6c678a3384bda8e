"""StreamEvaluate pipelined at both ends, over gRPC (batches inline) and on the local socket (batches in shared memory).

Both keep the order and give exactly the outputs and statistics unary calls give; the client sends a
bounded number of batches ahead; an error mid-stream ends the stream with its status after the
answers before it and leaves nothing held (stream slots, statistics hooks, the client's regions);
a cancel frees everything; a shared-memory stream reuses a small ring of regions and lets go of
them, refuses another user's region, and a client that dies mid-stream leaves nothing behind; a
client that cannot reach the local socket streams over gRPC.
"""

from __future__ import annotations

import itertools
import os
import pwd
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import status_pb2

from server_helpers import SPIRALS, serving, spec_source, wait_for
from specbuilder_client import Cancelled, Client, InvalidArgument
from specbuilder_client.local_stream import RING, LocalStream
from specbuilder_client.streaming import SEND_AHEAD, StreamRequests
from specbuilder_server import RunningServer
from specbuilder_wire.localsocket import HELLO, OK, STATUS, STREAM, hello, read_head, read_payload, send_frame
from specbuilder_wire.v1 import service_pb2, tensor_pb2

RNG = np.random.default_rng(11)
BATCHES = [RNG.normal(size=(int(rows), 2)).astype(np.float32) for rows in RNG.integers(1, 300, size=40)]
TRANSPORTS = ["grpc", "local socket"]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("store"), shared_memory=True) as server:
        yield server


def client_for(server: RunningServer, transport: str) -> Client:
    """A client whose streams go over gRPC, or to the local socket (its batches in shared memory)."""
    return Client(server.address, shared_memory=transport == "local socket")


def sender_of(stream: Any) -> Any:
    return stream._sender


def shm_names() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("specbuilder_")}


def nothing_held(server: RunningServer) -> None:
    """No stream open on the server, and no statistics hook left on its cached modules."""
    wait_for(lambda: not len(server.servicer.streams), "the stream's slot to be let go")
    cache = server.servicer._models.cache
    for key in list(cache._items):
        module = cache.get(key).module  # type: ignore[union-attr]
        assert not any(m._forward_hooks for m in module.modules()), f"a statistics hook stayed on {key}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_streams_keep_the_order_and_give_exactly_what_unary_calls_give(running: RunningServer, transport: str) -> None:
    with Client(running.address) as unary, client_for(running, transport) as client:
        expected = [unary.evaluate(SPIRALS, x).outputs for x in BATCHES]
        whole = unary.evaluate(SPIRALS, np.concatenate(BATCHES), statistics=True)
        stream = client.evaluate_stream(SPIRALS, iter(BATCHES), statistics=True)
        outputs = list(stream)
        assert isinstance(sender_of(stream), LocalStream if transport == "local socket" else StreamRequests)
    assert len(outputs) == len(BATCHES)
    for got, want in zip(outputs, expected):
        np.testing.assert_array_equal(got, want)
    rows = sum(map(len, BATCHES))
    assert (stream.summary.batches, stream.summary.rows) == (len(BATCHES), rows)
    assert [s.count for s in stream.summary.stats] == [s.count for s in whole.stats] == [rows * 16]
    assert [(s.min, s.max, s.histogram) for s in stream.summary.stats] == [(s.min, s.max, s.histogram) for s in whole.stats]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_error_mid_stream_ends_it_with_its_status_after_the_answers_before_it(running: RunningServer, transport: str) -> None:
    bad = [BATCHES[0], BATCHES[1], np.zeros((3, 5), np.float32), BATCHES[2], BATCHES[3]]
    with client_for(running, transport) as client:
        stream = client.evaluate_stream(SPIRALS, iter(bad), statistics=True)
        seen = []
        with pytest.raises(InvalidArgument) as caught:
            for output in stream:
                seen.append(output)
        assert len(seen) == 2 and [v.path for v in caught.value.violations] == ["batch[2].shape"]
        nothing_held(running)
        if transport == "local socket":
            wait_for(lambda: len(client._shared._spares) == RING, "the stream's ring to come back")
        assert client.evaluate_stream(SPIRALS, iter(BATCHES[:3])).summary.batches == 3  # the client streams on


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_cancelled_stream_stops_and_lets_go_of_everything(running: RunningServer, transport: str) -> None:
    def endless() -> Iterator[np.ndarray]:
        for i in itertools.count():
            yield np.full((4, 2), i, np.float32)

    with client_for(running, transport) as client:
        stream = client.evaluate_stream(SPIRALS, endless(), statistics=True)
        received = 0
        for _ in stream:
            received += 1
            if received == 5:
                stream.cancel()
        assert received == 5
        with pytest.raises(Cancelled):
            stream.summary
        nothing_held(running)
        if transport == "local socket":
            wait_for(lambda: len(client._shared._spares) == RING, "the stream's ring to come back")


def test_the_client_encodes_a_bounded_number_of_batches_ahead_of_grpc() -> None:
    pulled = []

    def batches() -> Iterator[np.ndarray]:
        for i in range(20):
            pulled.append(i)
            yield np.full((2, 2), i, np.float32)

    requests = StreamRequests(service_pb2.StreamEvaluateStart(model_id="m"), batches())
    messages = iter(requests)
    assert service_pb2.StreamEvaluateRequest.FromString(next(messages)).WhichOneof("item") == "start"
    first = next(messages)  # gRPC takes one; the thread encodes ahead and waits
    wait_for(lambda: len(pulled) == SEND_AHEAD + 2, "the batches encoded ahead")
    assert requests._encoded.full()  # SEND_AHEAD encoded, one more in hand: the thread waits for room
    rest = [first, *messages]
    assert [service_pb2.StreamEvaluateRequest.FromString(m).batch.shape for m in rest] == [[2, 2]] * 20
    assert len(pulled) == 20 and requests.error is None


def test_a_local_stream_sends_no_more_than_its_ring_before_answers_are_read(running: RunningServer) -> None:
    pulled = []

    def batches() -> Iterator[np.ndarray]:
        for i in range(3 * RING):
            pulled.append(i)
            yield np.full((2, 2), i, np.float32)

    with client_for(running, "local socket") as client:
        client.evaluate_stream(SPIRALS, iter(BATCHES[:1])).summary  # finds the socket
        stream = client.evaluate_stream(SPIRALS, batches())
        sender = sender_of(stream)
        wait_for(lambda: len(pulled) == RING + 1, "the ring's batches sent")
        assert not sender._free.acquire(blocking=False)  # every region holds a batch not yet answered
        assert len(list(stream)) == 3 * RING


def test_a_shared_memory_stream_reuses_its_ring_and_the_client_lets_go_of_it(running: RunningServer) -> None:
    with client_for(running, "local socket") as client:
        sent: list[tuple[str, int]] = []
        place = client._shared.tensor

        def recording(array: np.ndarray, copies: Any) -> tensor_pb2.Tensor:
            tensor = place(array, copies)
            sent.append((tensor.shared_memory.name, tensor.shared_memory.offset))
            return tensor

        client._shared.tensor = recording  # type: ignore[method-assign]
        for _ in range(2):
            assert client.evaluate_stream(SPIRALS, iter(BATCHES)).summary.batches == len(BATCHES)
        ring = {name for name, _ in sent}
        assert len(sent) == 2 * len(BATCHES) and len(ring) == RING  # 80 batches through the same regions
        assert ring <= shm_names()
        in_place = client.shared_array((64, 2))
        in_place[...] = BATCHES[4][:64]
        sent.clear()
        outputs = list(client.evaluate_stream(SPIRALS, iter([in_place[:32], in_place[32:]])))
        assert [offset for _, offset in sent] == [0, 32 * 2 * 4] and len({name for name, _ in sent}) == 1
        assert not {name for name, _ in sent} & ring  # sent where they lie, not copied into the ring
        np.testing.assert_array_equal(np.concatenate(outputs), client.evaluate(SPIRALS, in_place).outputs)
    assert not ring & shm_names()  # closing the client unlinked its ring


def test_another_users_region_in_a_stream_is_refused(running: RunningServer, other_user: pwd.struct_passwd) -> None:
    victim = f"specbuilder_victim_stream_{os.getpid()}"
    path = Path("/dev/shm") / victim
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.write(fd, np.ones((4, 2), np.float32).tobytes())
        os.fchown(fd, other_user.pw_uid, other_user.pw_gid)
        os.close(fd)
        assert running.local_socket is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(30)
            connection.connect(running.local_socket)
            send_frame(connection, HELLO, hello(None))
            assert read_head(connection)[0] == OK
            start = service_pb2.StreamEvaluateRequest(start=service_pb2.StreamEvaluateStart(spec=spec_source(SPIRALS)))
            batch = service_pb2.StreamEvaluateRequest(batch=tensor_pb2.Tensor(
                dtype=tensor_pb2.DTYPE_FLOAT32, shape=[4, 2], shared_memory=tensor_pb2.SharedMemoryRef(name=victim)))
            send_frame(connection, STREAM, start.SerializeToString())
            send_frame(connection, STREAM, batch.SerializeToString())
            kind, length = read_head(connection)
            status = status_pb2.Status.FromString(read_payload(connection, length))
            assert kind == STATUS and status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
            assert "belongs to another user" in status.message
    finally:
        path.unlink(missing_ok=True)
    nothing_held(running)


DYING_CLIENT = """
import itertools, sys, numpy as np
from specbuilder_client import Client
client = Client(sys.argv[1], shared_memory=True)
stream = client.evaluate_stream({spec!r}, (np.full((4, 2), i, np.float32) for i in itertools.count()))
for index, _ in enumerate(stream):
    if index == 3:
        print("streaming", flush=True)
        input()  # until killed
"""


def test_a_client_that_dies_mid_stream_leaves_no_region_and_no_stream(running: RunningServer) -> None:
    before = shm_names()
    script = DYING_CLIENT.format(spec=SPIRALS)
    with subprocess.Popen([sys.executable, "-c", script, running.address], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stdout.readline().strip() == "streaming"
        assert shm_names() - before, "the client's ring is in /dev/shm while it streams"
        child.send_signal(signal.SIGKILL)
        child.wait()
    wait_for(lambda: not shm_names() - before, "the dead client's regions to be unlinked (its resource tracker)")
    nothing_held(running)


def test_streams_go_over_grpc_where_the_local_socket_cannot_be_reached(tmp_path: Path) -> None:
    with serving(tmp_path / "plain") as plain, Client(plain.address, shared_memory=True) as client:  # no --shared-memory
        for _ in range(2):
            stream = client.evaluate_stream(SPIRALS, iter(BATCHES[:3]))
            assert len(list(stream)) == 3 and isinstance(sender_of(stream), StreamRequests)
            assert client._socket_path == ""  # the headers named no socket: the next stream does not ask again
    with serving(tmp_path / "no-socket", shared_memory=True, local_socket=False) as server, Client(server.address, shared_memory=True) as client:
        stream = client.evaluate_stream(SPIRALS, iter(BATCHES[:3]))
        assert len(list(stream)) == 3 and isinstance(sender_of(stream), StreamRequests)
    with serving(tmp_path / "socket", shared_memory=True) as server:
        with Client(server.address, shared_memory=True, local_socket=False) as client:
            stream = client.evaluate_stream(SPIRALS, iter(BATCHES[:3]))
            assert len(list(stream)) == 3 and isinstance(sender_of(stream), StreamRequests)
        with Client(server.address, shared_memory=True) as client:
            stream = client.evaluate_stream(SPIRALS, iter(BATCHES[:3]))
            expected = list(stream)
            assert isinstance(sender_of(stream), LocalStream)
            server._loop.run(server._local.close(0))  # type: ignore[union-attr] - the socket alone goes; gRPC still serves
            stream = client.evaluate_stream(SPIRALS, iter(BATCHES[:3]))
            for got, want in zip(list(stream), expected, strict=True):
                np.testing.assert_array_equal(got, want)
            assert isinstance(sender_of(stream), StreamRequests)


def test_a_stream_whose_batches_cross_lanes_counts_each_once(tmp_path: Path) -> None:
    sizes = [8, 400, 8, 400, 400, 8, 8, 400]  # each side of the threshold: batches started ahead in both lanes at once
    batches = [RNG.normal(size=(rows, 2)).astype(np.float32) for rows in sizes]
    per_row = 2 * (2 * 16 + 16 * 2)
    with serving(tmp_path / "store", large_call_flops=per_row * 100) as server, Client(server.address) as client:
        expected = [client.evaluate(SPIRALS, x).outputs for x in batches]
        whole = client.evaluate(SPIRALS, np.concatenate(batches), statistics=True)
        stream = client.evaluate_stream(SPIRALS, iter(batches), statistics=True)
        for got, want in zip(list(stream), expected, strict=True):
            np.testing.assert_array_equal(got, want)
        assert (stream.summary.batches, stream.summary.rows) == (len(sizes), sum(sizes))
        assert [(s.count, s.min, s.max, s.histogram) for s in stream.summary.stats] == [(s.count, s.min, s.max, s.histogram) for s in whole.stats]
