"""Dynamic batching (``specbuilder_server.batching``): concurrent Evaluate calls on one model merge into
one forward, each call gets exactly its own rows and statistics, and no call disturbs another.

Calls queue deterministically: a test holds the small compute lane busy with a task of its own, sends
its calls one by one (each is waiting in the server, per ``specbuilder_evaluate_waiting``, before the
next goes), then lets the lane go; forwards are counted by ``specbuilder_forward_calls``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from server_helpers import batch, counted, serving, spec_source, wait_for

from specbuilder.cli import main
from specbuilder_wire.v1 import service_pb2 as pb
from specbuilder_wire.v1.service_pb2_grpc import ModelServiceStub as Stub
from specbuilder_wire.arrays import to_numpy
from specbuilder_server import RunningServer, ServerConfig, ServerStartError, forward_pass, start_server
from specbuilder_server.compute_budget import Budget, Shared, Stopped

pytestmark = pytest.mark.usefixtures("one_thread")

MLP: dict[str, Any] = {
    "name": "mlp",
    "input_shape": [6],
    "layers": [
        {"type": "linear", "out_features": 16, "activation": "relu", "name": "hidden"},
        {"type": "linear", "out_features": 3, "name": "out"},
    ],
}
ELEMENTWISE: dict[str, Any] = {
    "name": "elementwise",
    "input_shape": [6],
    "layers": [{"type": "tanh", "name": "squash"}, {"type": "leaky_relu", "negative_slope": 0.1}, {"type": "softmax", "dim": -1}],
}
"""Row by row the same in a batch of any size: merged and alone give identical bits, statistics too."""
BATCH_NORM: dict[str, Any] = {
    "name": "norm",
    "input_shape": [6],
    "layers": [{"type": "batch_norm1d", "track_running_stats": False}, {"type": "linear", "out_features": 2}],
}
"""Normalizes with the batch's own statistics in evaluation: a call's outputs depend on its batch-mates."""


def rows(count: int, seed: int, dtype: Any = np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((count, 6)) * 3).astype(dtype)


def request(spec: dict[str, Any], x: np.ndarray, **options: Any) -> pb.EvaluateRequest:
    return pb.EvaluateRequest(spec=spec_source(spec), input=batch(x), options=pb.EvaluateOptions(**options))


def sample(server: RunningServer, name: str) -> float:
    """The value of one metric sample, summed over its labels."""
    return sum(s.value for family in server.servicer.metrics.registry.collect() for s in family.samples if s.name == name)


def forwards(server: RunningServer) -> tuple[float, float]:
    """Evaluate forwards run so far, and the calls they computed."""
    return sample(server, "specbuilder_forward_calls_count"), sample(server, "specbuilder_forward_calls_sum")


@contextmanager
def lane_held(server: RunningServer) -> Iterator[None]:
    """The small compute lane busy with a task of the test's until the block ends: Evaluate calls queue behind it."""
    release = threading.Event()
    blocker = server.servicer.lanes.small.submit(release.wait, 60)
    try:
        yield
    finally:
        release.set()
        blocker.result(timeout=60)


def queue(server: RunningServer, stub: Stub, requests: Sequence[pb.EvaluateRequest], **call: Any) -> list[grpc.Future]:
    """Send ``requests`` in order, each waiting in the server before the next goes (a lane must be held)."""
    futures = []
    for message in requests:
        waiting = sample(server, "specbuilder_evaluate_waiting")
        futures.append(stub.Evaluate.future(message, **call))
        wait_for(lambda: sample(server, "specbuilder_evaluate_waiting") == waiting + 1, "the call to wait for its forward")
    return futures


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("batching")) as server:
        yield server


@pytest.fixture
def stub(running: RunningServer) -> Iterator[Stub]:
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield Stub(channel)


def assert_same_answer(merged: pb.EvaluateResponse, alone: pb.EvaluateResponse, exact: bool = True) -> None:
    """Outputs (shape, dtype, values) and statistics as the call got them alone; compute time aside."""
    assert merged.output.shape == alone.output.shape and merged.output.dtype == alone.output.dtype
    if exact:
        assert merged.output.data == alone.output.data
        assert list(merged.stats) == list(alone.stats)
    else:
        np.testing.assert_allclose(to_numpy(merged.output), to_numpy(alone.output), rtol=1e-6, atol=1e-7)
        assert [s.count for s in merged.stats] == [s.count for s in alone.stats]


def test_calls_that_queue_while_the_lane_is_busy_merge_into_one_forward_and_get_their_own_answers(running: RunningServer, stub: Stub) -> None:
    requests = [
        request(ELEMENTWISE, rows(1, 0), statistics=True),
        request(ELEMENTWISE, rows(5, 1)),
        request(ELEMENTWISE, rows(3, 2), statistics=True, all_layers=True, bins=8),
        request(ELEMENTWISE, rows(2, 3), statistics=True, skip_output=True),
        request(ELEMENTWISE, rows(4, 4), statistics=True, layers=["squash"]),
    ]
    alone = [stub.Evaluate(message) for message in requests]
    before = forwards(running)
    with lane_held(running):
        futures = queue(running, stub, requests)
    answers = [future.result(timeout=60) for future in futures]
    assert np.subtract(forwards(running), before).tolist() == [1, 5], "one forward for the five calls"
    for merged, own in zip(answers, alone):
        assert_same_answer(merged, own)
        assert merged.compute_seconds > 0
    assert [s.count for s in answers[0].stats] == [6] * 3 and not answers[3].HasField("output")


def test_a_real_model_merges_with_outputs_as_close_as_alone(running: RunningServer, stub: Stub) -> None:
    """A matmul over more rows may round differently in the last bit: the tolerance of the other Evaluate tests."""
    requests = [request(MLP, rows(count, count), statistics=True) for count in (1, 32, 7, 32)]
    alone = [stub.Evaluate(message) for message in requests]
    before = forwards(running)
    with lane_held(running):
        futures = queue(running, stub, requests)
    for future, own in zip(futures, alone):
        assert_same_answer(future.result(timeout=60), own, exact=False)
    assert np.subtract(forwards(running), before).tolist() == [1, 4]


def test_a_bad_call_fails_alone_and_its_batch_mates_do_not_notice(running: RunningServer, stub: Stub) -> None:
    good = [request(ELEMENTWISE, rows(2, seed)) for seed in range(3)]
    alone = [stub.Evaluate(message) for message in good]
    short = request(ELEMENTWISE, rows(2, 9))
    short.input.data = short.input.data[:-4]  # the right shape, one element missing
    wrong_shape = request(ELEMENTWISE, rows(2, 5)[:, :4])
    wrong_dtype = request(ELEMENTWISE, rows(2, 6))
    wrong_dtype.input.dtype = 99
    before = forwards(running)
    with lane_held(running):
        futures = queue(running, stub, [good[0], short, wrong_shape, good[1], wrong_dtype, good[2]])
    for future, field in zip([futures[1], futures[2], futures[4]], ["input.data", "input.shape", "input.dtype"]):
        failure = future.exception(timeout=60)
        assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT and failure.details().startswith(field)
    for future, own in zip([futures[0], futures[3], futures[5]], alone):
        assert_same_answer(future.result(timeout=60), own)
    assert np.subtract(forwards(running), before).tolist() == [1, 3]


def test_a_merged_forward_that_fails_is_computed_again_call_by_call(running: RunningServer, stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [request(ELEMENTWISE, rows(2, seed), statistics=True) for seed in range(3)]
    alone = [stub.Evaluate(message) for message in requests]

    def fails(*args: Any) -> None:
        raise RuntimeError("out of memory for the merged batch")

    monkeypatch.setattr(forward_pass.Pass, "run_merged", staticmethod(fails))
    before = forwards(running)
    with lane_held(running):
        futures = queue(running, stub, requests)
    for future, own in zip(futures, alone):
        assert_same_answer(future.result(timeout=60), own)
    assert np.subtract(forwards(running), before).tolist() == [4, 6], "the merged try, then each call alone"


def test_a_call_cancelled_while_it_waits_leaves_its_batch(running: RunningServer, stub: Stub) -> None:
    requests = [request(ELEMENTWISE, rows(2, seed)) for seed in range(3)]
    alone = [stub.Evaluate(message) for message in requests]
    cancelled = counted(running, "Evaluate")
    before = forwards(running)
    with lane_held(running):
        futures = queue(running, stub, requests)
        futures[1].cancel()
        wait_for(lambda: counted(running, "Evaluate") == cancelled + 1, "the server to end the cancelled call")
    for index in (0, 2):
        assert_same_answer(futures[index].result(timeout=60), alone[index])
    assert np.subtract(forwards(running), before).tolist() == [1, 2]


def test_a_call_whose_deadline_passes_while_it_waits_leaves_its_batch(running: RunningServer, stub: Stub) -> None:
    requests = [request(ELEMENTWISE, rows(2, seed)) for seed in range(2)]
    ended = counted(running, "Evaluate")
    before = forwards(running)
    with lane_held(running):
        waits = queue(running, stub, requests[:1])[0]
        late = queue(running, stub, requests[1:], timeout=2)[0]
        assert late.exception(timeout=60).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: counted(running, "Evaluate") == ended + 1, "the server to end the late call")
    assert waits.result(timeout=60).output.shape == [2, 6]
    assert np.subtract(forwards(running), before).tolist() == [1, 1]


def test_a_call_cancelled_while_its_batch_computes_stops_alone(running: RunningServer, stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [request(ELEMENTWISE, rows(2, seed), statistics=True) for seed in range(3)]
    alone = [stub.Evaluate(message) for message in requests]
    computing, go_on = threading.Event(), threading.Event()
    real = forward_pass.forward

    def held_forward(*args: Any, **kwargs: Any) -> Any:
        computing.set()
        go_on.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(forward_pass, "forward", held_forward)
    ended = counted(running, "Evaluate")
    before = forwards(running)
    with lane_held(running):
        futures = queue(running, stub, requests)
    computing.wait(60)
    futures[1].cancel()
    wait_for(lambda: counted(running, "Evaluate") == ended + 1, "the server to end the cancelled call")
    go_on.set()
    for index in (0, 2):
        assert_same_answer(futures[index].result(timeout=60), alone[index])
    assert np.subtract(forwards(running), before).tolist() == [1, 3], "the cancelled call was in the forward"


def test_different_models_dtypes_amp_and_batch_statistics_never_merge(running: RunningServer, stub: Stub) -> None:
    requests = [
        request(MLP, rows(2, 0)),
        request(MLP, rows(2, 1), statistics=True),  # other statistics options merge
        request(ELEMENTWISE, rows(2, 2)),
        request(MLP, rows(2, 3, np.float64)),
        request(MLP, rows(2, 4), amp="bf16"),
        request(BATCH_NORM, rows(2, 5)),
        request(BATCH_NORM, rows(2, 6)),
    ]
    before = forwards(running)
    with lane_held(running):
        futures = queue(running, stub, requests)
    for future in futures:
        assert future.result(timeout=60).output.shape[0] == 2
    assert np.subtract(forwards(running), before).tolist() == [6, 7], "only the first two merge"


def test_a_batch_takes_at_most_max_batch_rows_and_a_larger_call_computes_alone(tmp_path: Path) -> None:
    with serving(tmp_path, max_batch_rows=4) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = Stub(channel)
        with lane_held(server):
            futures = queue(server, stub, [request(MLP, rows(count, count)) for count in (3, 1, 2, 5, 1)])
        assert [len(to_numpy(future.result(timeout=60).output)) for future in futures] == [3, 1, 2, 5, 1]
        assert forwards(server) == (4, 5), "3 + 1 rows; 2, where 5 do not fit; 5 alone, where 1 does not fit; 1"


def test_a_batch_holds_no_more_elements_in_a_layer_than_one_call_may(tmp_path: Path) -> None:
    with serving(tmp_path, max_batch_elements=4 * 6) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = Stub(channel)  # the elementwise model holds 6 elements a row in every layer: 4 rows at most
        with lane_held(server):
            futures = queue(server, stub, [request(ELEMENTWISE, rows(count, count)) for count in (3, 1, 2)])
        for future in futures:
            future.result(timeout=60)
        assert forwards(server) == (2, 3), "3 + 1 rows, then 2"


def test_without_dynamic_batching_every_call_computes_alone(tmp_path: Path) -> None:
    with serving(tmp_path, dynamic_batching=False) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = Stub(channel)
        with lane_held(server):
            futures = queue(server, stub, [request(MLP, rows(2, seed)) for seed in range(4)])
        for future in futures:
            future.result(timeout=60)
        assert forwards(server) == (4, 4)


def test_a_batch_delay_gathers_calls_while_the_lane_is_idle_until_the_batch_is_full(tmp_path: Path) -> None:
    settings = {"batch_delay_us": 10_000_000, "max_batch_rows": 6}  # a delay no test waits out: the third call fills the batch
    with serving(tmp_path, **settings) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = Stub(channel)
        futures = [stub.Evaluate.future(request(MLP, rows(2, seed))) for seed in range(3)]  # nothing holds the lane
        for future in futures:
            future.result(timeout=60)
        assert forwards(server) == (1, 3)


@pytest.mark.cuda
def test_on_cuda_the_rows_are_gathered_on_the_host_and_merged_answers_match_alone(tmp_path: Path) -> None:
    server = start_server(ServerConfig(port=0, store=tmp_path, device="cuda", grace_seconds=2.0))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = Stub(channel)
            requests = [request(MLP, rows(count, count), statistics=True) for count in (1, 32, 7)]
            alone = [stub.Evaluate(message) for message in requests]
            with lane_held(server):
                futures = queue(server, stub, requests)
            for future, own in zip(futures, alone):
                answer = future.result(timeout=60)
                np.testing.assert_allclose(to_numpy(answer.output), to_numpy(own.output), rtol=1e-4, atol=1e-5)
                assert [s.count for s in answer.stats] == [s.count for s in own.stats]
            assert forwards(server)[0] == len(alone) + 1
    finally:
        server.stop()


def test_merged_calls_are_stopped_one_by_one() -> None:
    late = Budget(time.monotonic() - 1, 60.0)
    on_time = Budget(None, 60.0)
    cancelled = Budget(None, 60.0)
    cancelled.cancel("the client cancelled the call")
    shared = Shared([on_time, late, cancelled], [0.5, 0.25, 0.25])
    shared.check()  # the forward goes on for the call on time
    assert {index: stop.code for index, stop in shared.stopped.items()} == {
        1: grpc.StatusCode.DEADLINE_EXCEEDED, 2: grpc.StatusCode.CANCELLED}
    on_time.cancel("gone too")
    with pytest.raises(Stopped):
        shared.check()


def test_the_compute_cap_counts_a_calls_share_of_a_merged_forward() -> None:
    budget = Budget(None, 0.05)
    budget.check(share=0.01)
    time.sleep(0.1)  # twice the cap in all, a fiftieth of it for this call's share
    budget.check(share=0.01)
    with pytest.raises(Stopped) as stopped:
        budget.check()
    assert stopped.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_serve_flags_set_batching_and_refuse_bad_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import specbuilder_server

    configs: list[Any] = []

    def capture(config: Any) -> None:
        configs.append(config)
        raise ServerStartError("not started: the test only reads the configuration")

    monkeypatch.setattr(specbuilder_server, "start_server", capture)
    store = ["--port", "0", "--store", str(tmp_path)]
    assert main(["serve", *store]) == 1
    assert main(["serve", *store, "--no-dynamic-batching", "--max-batch-rows", "64", "--batch-delay-us", "250"]) == 1
    assert [(c.dynamic_batching, c.max_batch_rows, c.batch_delay_us) for c in configs] == [(True, 1024, 0), (False, 64, 250)]
    capsys.readouterr()
    for flag, value, message in [("--max-batch-rows", "0", "must be >= 1, got 0"), ("--batch-delay-us", "-5", "must be >= 0, got -5"),
                                 ("--batch-delay-us", "soon", "must be an integer, got 'soon'")]:
        assert main(["serve", *store, flag, value]) == 2
        assert f"argument {flag}: {message}" in capsys.readouterr().err
    assert main(["serve", *store, "--batch-delay-us", "20000000"]) == 1
    assert "serve: batch_delay_us: Input should be less than or equal to 10000000" in capsys.readouterr().err
