"""No caller can starve the others or read what is not its own.

Each attack is held open while a well-behaved client works; the test asserts outcomes (every
well-behaved call answered, the attack refused with the right status, nothing left behind) and
records latencies as figures, never as assertions:

- unauthenticated calls opened and never sent (they used to hold every worker thread);
- idle StreamEvaluate calls, Train calls whose client never reads, idle connections;
- a stream that stops sending, a reader that stops reading (``stream_idle_seconds``);
- streams over the caps, in all and on one connection;
- a call too costly to start, one that runs past its compute cap, a large call beside small ones;
- caches filled with the largest specs the server accepts;
- another OS user's shared-memory region named on gRPC and on the local socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from conftest import Tally
from rss import resident_mib
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_helpers import SPIRALS, batch, config_values, connect, rpc_error, serving, spec_source, train_request
from specbuilder_client import Client
from specbuilder_client.errors import PermissionDenied
from specbuilder_server import RunningServer

from specbuilder.spec import parse_spec
from specbuilder_wire.v1 import service_pb2, service_pb2_grpc, tensor_pb2

TOKEN = "isolation-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
X = np.random.default_rng(3).normal(size=(32, 2)).astype(np.float32)
PROBES = 40
"""Calls a well-behaved client times, idle and under each attack."""
CONV = {
    "name": "costly-conv", "input_shape": [3, 32, 32],
    "layers": [{"type": "conv2d", "out_channels": 64, "kernel_size": 3, "padding": 1, "activation": "relu"}] * 8,
}
"""The audit's costly spec: eight 64-channel 3x3 convolutions (about 0.6 GFLOPs a row)."""


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def probe(address: str, tally: Tally, label: str, count: int = PROBES) -> list[float]:
    """``count`` authenticated Evaluate calls and health checks; every one must answer (5 s deadline). Their latencies."""
    seconds = []
    with connect(address) as stub, grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = service_pb2.EvaluateRequest(spec=spec_source(SPIRALS), input=batch(X))
        for _ in range(count):
            started = time.perf_counter()
            stub.Evaluate(request, metadata=AUTH, timeout=5)
            seconds.append(time.perf_counter() - started)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    tally.figure(f"{label}: Evaluate p50 ms", round(percentile_ms(seconds, 50), 2))
    tally.figure(f"{label}: Evaluate p99 ms", round(percentile_ms(seconds, 99), 2))
    return seconds


class Attack:
    """An asyncio client on a thread of its own, holding calls open until ``close``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.channels: list[grpc.aio.Channel] = []
        self.calls: list[Any] = []

    def run(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def channel(self, address: str) -> grpc.aio.Channel:
        """A channel with a connection of its own (not shared with the others)."""
        channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        await asyncio.wait_for(channel.channel_ready(), 10)
        self.channels.append(channel)
        return channel

    def close(self) -> None:
        """Cancel every call and close every channel; idempotent."""
        if self.loop.is_closed():
            return

        async def closing() -> None:
            for call in self.calls:
                call.cancel()
            await asyncio.gather(*(channel.close() for channel in self.channels))

        self.run(closing())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


@pytest.fixture
def attack() -> Iterator[Attack]:
    attacker = Attack()
    try:
        yield attacker
    finally:
        attacker.close()


def threads_now() -> int:
    return threading.active_count()


def test_unauthenticated_calls_that_never_send_their_request_hold_nothing(tmp_path: Path, attack: Attack, tally: Tally, budget: Any) -> None:
    hanging = budget.pick(100, 400)
    with serving(tmp_path / "store", tokens=(TOKEN,)) as server:
        idle = probe(server.address, tally, "idle server")

        async def open_calls() -> None:
            channel = await attack.channel(server.address)
            for index in range(hanging):  # a unary method opened as a stream: headers go, the request never does
                method = ("ListModels", "Evaluate", "ValidateSpec", "GetModel")[index % 4]
                call = channel.stream_unary(f"/specbuilder.v1.ModelService/{method}")(metadata=() if index % 2 else (("authorization", "Bearer wrong"),))
                attack.calls.append(call)
            await asyncio.sleep(0.5)  # every call reached the server

        attack.run(open_calls())
        attacked = probe(server.address, tally, f"{hanging} unauthenticated calls held open")
        async def codes_of() -> list[grpc.StatusCode]:
            return list(await asyncio.wait_for(asyncio.gather(*(call.code() for call in attack.calls)), 10))

        codes = attack.run(codes_of())
        tally.count("unauthenticated call never sent", codes[0].name, len(codes))
        assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}, "refused at once, before any request arrived"
    tally.figure("p99 ratio, attacked / idle", round(percentile_ms(attacked, 99) / percentile_ms(idle, 99), 2))


def test_idle_streams_unread_trainings_and_idle_connections_starve_nobody_and_leave_nothing(
        tmp_path: Path, attack: Attack, tally: Tally, budget: Any) -> None:
    streams, trains, connections = budget.pick((200, 50, 500), (400, 100, 1000))
    settings = dict(max_streams=streams + trains, max_streams_per_connection=64, max_concurrent_trains=trains, stream_idle_seconds=120)
    with serving(tmp_path / "store", **settings) as server:
        idle = probe(server.address, tally, "idle server")
        threads, memory = threads_now(), resident_mib(os.getpid())
        start = service_pb2.StreamEvaluateRequest(start=service_pb2.StreamEvaluateStart(spec=spec_source(SPIRALS)))
        run = train_request(epochs=1, batch_size=256, stats_every=1)

        async def open_everything() -> None:
            channels = await asyncio.gather(*(attack.channel(server.address) for _ in range(connections)))
            for index in range(streams):
                call = service_pb2_grpc.ModelServiceStub(channels[index % 10]).StreamEvaluate()
                await call.write(start)  # then nothing: an idle stream
                attack.calls.append(call)
            for index in range(trains):
                attack.calls.append(service_pb2_grpc.ModelServiceStub(channels[10 + index % 10]).Train(run))  # never read
            await asyncio.sleep(1.0)

        attack.run(open_everything())
        assert len(server.servicer.streams) >= streams  # the idle ones; a Train whose events all fit in gRPC's buffers may be over
        assert server.servicer._jobs.wait(120), "the trainings did not end"  # the runs' own compute is not the attack
        attacked = probe(server.address, tally, f"{streams} idle streams, {trains} unread trainings, {connections} idle connections")
        tally.figure("server threads, idle", threads)
        tally.figure("server threads, attacked", threads_now())
        tally.figure("RSS of server and attacker, MiB: idle → attacked", f"{memory:.0f} → {resident_mib(os.getpid()):.0f}")
        attack.close()
        wait_for_closed(server)
        tally.figure("RSS after the attack closed, MiB", round(resident_mib(os.getpid())))
        tally.count("idle StreamEvaluate", "held, no thread", streams)
        tally.count("Train never read", "held, no thread", trains)
        tally.count("idle connection", "held", connections)
    tally.figure("p99 ratio, attacked / idle", round(percentile_ms(attacked, 99) / percentile_ms(idle, 99), 2))


def wait_for_closed(server: RunningServer) -> None:
    deadline = time.monotonic() + 30
    while len(server.servicer.streams) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not len(server.servicer.streams), "streams still counted open after their clients went"


def test_streams_over_the_caps_are_refused_naming_the_limit(tmp_path: Path, attack: Attack, tally: Tally) -> None:
    with serving(tmp_path / "store", max_streams=6, max_streams_per_connection=4) as server:
        start = service_pb2.StreamEvaluateRequest(start=service_pb2.StreamEvaluateStart(spec=spec_source(SPIRALS)))

        async def open_streams() -> list[tuple[grpc.StatusCode, str]]:
            refused = []
            for channel, count in ((await attack.channel(server.address), 4), (await attack.channel(server.address), 2)):
                stub = service_pb2_grpc.ModelServiceStub(channel)
                for _ in range(count):
                    call = stub.StreamEvaluate()
                    await call.write(start)
                    attack.calls.append(call)
                await asyncio.sleep(0.5)
                extra = stub.StreamEvaluate()  # the 5th on the first connection; the 7th in all on the second: refused before any message
                refused.append((await extra.code(), await extra.details()))
            return refused

        (per_connection, total) = attack.run(open_streams())
    assert per_connection[0] == total[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_streams_per_connection" in per_connection[1] and "(max_streams)" in total[1]
    tally.count("stream over the per-connection cap", per_connection[0].name)
    tally.count("stream over the server's cap", total[0].name)


def test_a_stream_that_stops_sending_or_reading_is_ended(tmp_path: Path, attack: Attack, tally: Tally) -> None:
    wide = {"name": "wide", "input_shape": [2], "layers": [{"type": "linear", "out_features": 4096}]}
    rows = np.ones((200, 2), np.float32)  # 3.3 MB answers: under the client's 4 MB limit
    with serving(tmp_path / "store", stream_idle_seconds=1.0) as server:

        async def silent_and_deaf() -> tuple[grpc.StatusCode, str]:
            channel = await attack.channel(server.address)
            stub = service_pb2_grpc.ModelServiceStub(channel)
            silent = stub.StreamEvaluate()
            await silent.write(service_pb2.StreamEvaluateRequest(start=service_pb2.StreamEvaluateStart(spec=spec_source(SPIRALS))))
            deaf = stub.StreamEvaluate()  # sends 4 MB answers' worth of batches and reads none of them
            attack.calls.append(deaf)
            await deaf.write(service_pb2.StreamEvaluateRequest(start=service_pb2.StreamEvaluateStart(spec=spec_source(wide))))
            for _ in range(8):
                await deaf.write(service_pb2.StreamEvaluateRequest(batch=batch(rows)))
            return await silent.code(), await silent.details()

        async def read_at_last(call: Any) -> tuple[grpc.StatusCode, str]:
            """What a reader that stopped finds when it reads again: the answers sent before the server gave up, then why."""
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for _ in call:
                    pass
            return await call.code(), await call.details()

        ended = [attack.run(silent_and_deaf())]
        wait_for_closed(server)  # the server let go of both while the deaf client still reads nothing
        ended.append(attack.run(read_at_last(attack.calls[-1])))
    for code, details in ended:
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "stream_idle_seconds" in details
    tally.count("stream that stopped sending", ended[0][0].name)
    tally.count("stream that stopped reading", ended[1][0].name)


def test_a_call_too_costly_is_refused_and_one_over_its_compute_cap_is_stopped(tmp_path: Path, tally: Tally) -> None:
    rows = np.zeros((190, 3, 32, 32), np.float32)
    with serving(tmp_path / "store", max_flops_per_call=10**10, max_compute_seconds=0.02) as server, connect(server.address) as stub:
        failure = rpc_error(lambda: stub.Evaluate(service_pb2.EvaluateRequest(spec=spec_source(CONV), input=batch(rows)), timeout=30))
        assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_flops_per_call" in failure.message
        assert f"send at most {10**10 // parse_spec(CONV).flops(1)} samples" in failure.message
        tally.count("190 rows through 8 convolutions, over max_flops_per_call", failure.code.name)
        quiet = service_pb2.EvaluateOptions(skip_output=True)
        capped = rpc_error(lambda: stub.Evaluate(service_pb2.EvaluateRequest(spec=spec_source(CONV), input=batch(rows[:16]), options=quiet), timeout=30))
        tally.count("16 rows through 8 convolutions, past max_compute_seconds", capped.code.name)
    assert capped.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_compute_seconds" in capped.message


def test_the_audits_1024_layer_spec_is_refused_before_it_is_compiled(tmp_path: Path, tally: Tally) -> None:
    deep = {**CONV, "name": "deep-conv", "layers": CONV["layers"][:1] * 1024}
    rows = np.zeros((190, 3, 32, 32), np.float32)
    with serving(tmp_path / "store") as server, connect(server.address) as stub:
        failure = rpc_error(lambda: stub.Evaluate(service_pb2.EvaluateRequest(spec=spec_source(deep), input=batch(rows)), timeout=60))
        assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_flops_per_call" in failure.message
        assert len(server.servicer._models.cache) == 0, "nothing was compiled for a call refused for its cost"
    tally.count("1024 convolutions (37.8 M parameters) on 190 rows, default limits", failure.code.name)


def test_small_calls_are_answered_while_a_large_one_computes_and_a_cancel_stops_it(tmp_path: Path, tally: Tally) -> None:
    rows = np.zeros((190, 3, 32, 32), np.float32)
    with serving(tmp_path / "store") as server, connect(server.address) as stub:
        large = stub.Evaluate.future(service_pb2.EvaluateRequest(spec=spec_source(CONV), input=batch(rows)), timeout=60)
        time.sleep(0.3)  # it is computing
        small = probe(server.address, tally, "beside a large call", count=10)
        large.cancel()
        started = time.perf_counter()
        again = stub.Evaluate(service_pb2.EvaluateRequest(spec=spec_source(CONV), input=batch(rows[:1])), timeout=60)
        tally.figure("a large call after the cancelled one, s", round(time.perf_counter() - started, 3))
    assert again.output.shape == [1, 64, 32, 32] and len(small) == 10


def test_the_model_cache_stays_within_its_bytes_whatever_the_specs(tmp_path: Path, tally: Tally) -> None:
    specs = [{"name": f"big-{i}", "input_shape": [1000], "layers": [{"type": "linear", "out_features": 10_000 + i}]} for i in range(4)]
    with serving(tmp_path / "store", cache_mb=50) as server, connect(server.address) as stub:
        for spec in specs:  # about 40 MB of weights each
            stub.CompileSpec(service_pb2.CompileSpecRequest(spec=spec_source(spec)), timeout=60)
            stub.Evaluate(service_pb2.EvaluateRequest(spec=spec_source(spec), input=batch(np.zeros((1, 1000), np.float32))), timeout=60)
        cache = server.servicer._models.cache
        tally.figure("cache bytes after 8 calls of 40 MB models, limit 50 MB", cache.nbytes)
        assert cache.nbytes <= 50 * 2**20 and len(cache) <= 1


def test_layers_naming_one_module_a_million_times_is_refused_at_once(tmp_path: Path, tally: Tally) -> None:
    with serving(tmp_path / "store") as server, connect(server.address) as stub:
        options = service_pb2.EvaluateOptions(statistics=True, layers=["fc1"] * 1_000_000)
        failure = rpc_error(lambda: stub.Evaluate(service_pb2.EvaluateRequest(spec=spec_source(SPIRALS), input=batch(X), options=options), timeout=10))
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT and failure.fields == ["options.layers"]
        twice = service_pb2.EvaluateOptions(statistics=True, layers=["fc1", "fc1"])
        answer = stub.Evaluate(service_pb2.EvaluateRequest(spec=spec_source(SPIRALS), input=batch(X), options=twice), timeout=10)
        assert [layer.name for layer in answer.stats] == ["fc1"]
    tally.count("layers: one name 1,000,000 times", failure.code.name)


def test_a_client_cannot_move_training_off_the_servers_device(tmp_path: Path, tally: Tally) -> None:
    with serving(tmp_path / "store") as server, connect(server.address) as stub:
        request = service_pb2.TrainRequest(spec=spec_source(SPIRALS), dataset="spirals",
                                           config=config_values({"epochs": 1, "device": "cuda:3"}))
        failure = rpc_error(lambda: list(stub.Train(request, timeout=30)))
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT and failure.fields == ["config.device"] and "cpu" in failure.message
        allowed = service_pb2.TrainRequest(spec=spec_source(SPIRALS), dataset="spirals", config=config_values({"epochs": 1, "device": "cpu"}))
        assert list(stub.Train(allowed, timeout=60))[-1].finished.status == service_pb2.RUN_STATUS_COMPLETED
    tally.count("config.device cuda:3 on a cpu server", failure.code.name)


# -- shared memory belongs to its owner --------------------------------------------------------


def region(name: str, data: bytes, owner: pwd.struct_passwd | None) -> Callable[[], None]:
    """A POSIX shared-memory region holding ``data``, mode 0600, owned by ``owner`` (None: this process's user); its remover."""
    path = Path("/dev/shm") / name
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.write(fd, data)
        if owner is not None:
            os.fchown(fd, owner.pw_uid, owner.pw_gid)
    finally:
        os.close(fd)
    return lambda: path.unlink(missing_ok=True)


def test_another_users_region_is_refused_on_grpc_and_on_the_local_socket(tmp_path: Path, other_user: pwd.struct_passwd, tally: Tally) -> None:
    secret = np.arange(64, dtype=np.float32).reshape(32, 2)
    identity = {"name": "identity", "input_shape": [2], "layers": [{"type": "identity"}]}
    victim, mine = f"specbuilder_victim_{os.getpid()}", f"specbuilder_mine_{os.getpid()}"
    removers = [region(victim, secret.tobytes(), other_user), region(mine, secret.tobytes(), None)]
    try:
        with serving(tmp_path / "store", shared_memory=True) as server, connect(server.address) as stub:
            def over_grpc(name: str) -> Any:
                tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[32, 2], shared_memory=tensor_pb2.SharedMemoryRef(name=name))
                return rpc_error(lambda: stub.Evaluate(service_pb2.EvaluateRequest(spec=spec_source(identity), input=tensor), timeout=10))

            refused = over_grpc(victim)
            assert refused.code == grpc.StatusCode.PERMISSION_DENIED and "local socket" in refused.message
            assert over_grpc(mine).code == grpc.StatusCode.PERMISSION_DENIED  # gRPC cannot tell whose it is: none is read
            tally.count("another user's region on gRPC", refused.code.name)
            with Client(server.address, shared_memory=True) as client:
                region_ref = tensor_pb2.SharedMemoryRef(name=victim)
                request = service_pb2.EvaluateRequest(spec=spec_source(identity), input=tensor_pb2.Tensor(
                    dtype=tensor_pb2.DTYPE_FLOAT32, shape=[32, 2], shared_memory=region_ref))
                with pytest.raises(PermissionDenied) as caught:
                    client._evaluate_shared(request, 10)
                assert client.local_socket == server.local_socket, "the refusal on gRPC led the client to the local socket"
                assert "belongs to another user" in caught.value.message
                tally.count("another user's region on the local socket", caught.value.code.name)
                request.input.shared_memory.name = mine
                own = client._evaluate_shared(request, 10)
                np.testing.assert_array_equal(np.frombuffer(own.output.data, np.float32).reshape(32, 2), secret)
    finally:
        for remove in removers:
            remove()
