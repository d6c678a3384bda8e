"""Every server limit, pushed past round after round: each call is refused or stopped with the status
the server promises, and the server's memory comes back to where it was once the pressure ends.

One ``specbuilder serve`` subprocess with small limits (``LIMITS``). A round: two endless trainings
fill the pool and two more are refused; while they run, a spec over ``--max-params``, a batch
over ``--max-batch-elements``, a request and a response over ``--max-message-mb`` (Evaluate and
StreamEvaluate each), and more distinct specs than ``--cache-size`` keeps; then both trainings end
at ``--max-train-seconds``, stored cancelled with that reason. Memory: the server's resident set
after one warm-up round (once it has been idle long enough to give freed memory back), its peak,
and where it settles after all the rounds.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rss import SETTLE_MIB, idle_mib, needs_proc, peak_mib, resident_mib
from server_helpers import ENDLESS, batch, connect, rpc_error, server_process, spec_source, train_request, wait_for
from specbuilder_wire.v1 import service_pb2 as pb
from specbuilder_wire.v1.service_pb2_grpc import ModelServiceStub as Stub

MESSAGE_MB, MAX_PARAMS, MAX_ELEMENTS, TRAINS, TRAIN_SECONDS, CACHE = 8, 1_000_000, 4_000_000, 2, 2, 4
LIMITS = (
    "--max-message-mb", str(MESSAGE_MB), "--max-params", str(MAX_PARAMS), "--max-batch-elements", str(MAX_ELEMENTS),
    "--max-concurrent-trains", str(TRAINS), "--max-train-seconds", str(TRAIN_SECONDS), "--cache-size", str(CACHE),
)
ROOMY = {"grpc.max_send_message_length": 64 << 20, "grpc.max_receive_message_length": 64 << 20}
"""The client's own limits, well above the server's: every refusal here is the server's."""
WIDE: dict[str, Any] = {"name": "wide", "input_shape": [64], "layers": [{"type": "linear", "out_features": 1024, "name": "fc"}]}
"""1,024 outputs a sample: 2,048 rows answer 8 MB."""
OVER_PARAMS: dict[str, Any] = {"input_shape": [1024], "layers": [{"type": "linear", "out_features": 1024}]}
"""1,049,600 parameters, over ``MAX_PARAMS``."""
CHURN_FEATURES = range(1000, 1240)
"""Output widths of distinct specs of 0.8-1 M parameters (3-4 MB of weights each) that pass through the cache."""
CHURN_PER_ROUND = 32
"""Specs compiled and let go each round: 115 MB, more than ``SETTLE_MIB``, so keeping them fails the test."""
X = np.random.default_rng(0).random((40_000, 64), dtype=np.float32)
FITS = X[:1_500]
"""6 MB out: a large answer within every limit."""
TOO_MANY_ELEMENTS = X[:5_000]
"""5,120,000 output elements, over ``MAX_ELEMENTS``, in a 1.3 MB request."""
TOO_BIG_ANSWER = X[:3_000]
"""12 MB out, over ``MESSAGE_MB``, with 3,072,000 elements (within ``MAX_ELEMENTS``)."""
TOO_BIG_REQUEST = X
"""10 MB in, over ``MESSAGE_MB``."""


def evaluate(spec: dict[str, Any], x: np.ndarray) -> pb.EvaluateRequest:
    return pb.EvaluateRequest(spec=spec_source(spec), input=batch(x))


def stream(spec: dict[str, Any], *batches: np.ndarray) -> Iterator[pb.StreamEvaluateRequest]:
    yield pb.StreamEvaluateRequest(start=pb.StreamEvaluateStart(spec=spec_source(spec)))
    for x in batches:
        yield pb.StreamEvaluateRequest(batch=batch(x))


def refused(tally: Any, kind: str, call: Any, code: grpc.StatusCode, says: str) -> None:
    """``call`` must fail with ``code`` and a message containing ``says`` (the limit it names)."""
    failure = rpc_error(call)
    tally.count(kind, failure.code.name)
    assert failure.code == code and says in failure.message, (kind, failure)


def start_training(stub: Stub) -> tuple[Any, str]:
    """An endless training run, admitted as soon as a slot is free (the last round's runs may still be leaving the pool)."""

    def admitted() -> tuple[Any, str] | None:
        call = stub.Train(train_request(**ENDLESS))
        try:
            return call, next(call).run_id
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            return None

    return wait_for(admitted, "a free training slot")


def one_more_training(stub: Stub, tally: Any) -> str | None:
    """A Train call while the pool is full: refused, or the id of a run admitted because a slot had already freed."""
    try:
        events = list(stub.Train(train_request()))
    except grpc.RpcError as error:
        tally.count("Train over max_concurrent_trains", error.code().name)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_concurrent_trains" in (error.details() or ""), error
        return None
    tally.count("Train over max_concurrent_trains", "admitted: a run had reached its time limit (slow box)")
    return events[0].run_id


def one_round(stub: Stub, tally: Any, churn: Iterator[int]) -> None:
    """Every limit pushed past once, while the training pool is full."""
    running = [start_training(stub) for _ in range(TRAINS)]
    tally.count("Train within max_concurrent_trains", "started", TRAINS)
    admitted = [run_id for run_id in (one_more_training(stub, tally) for _ in range(2)) if run_id]

    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    refused(tally, "spec over max_params (Evaluate)", lambda: stub.Evaluate(evaluate(OVER_PARAMS, np.zeros((4, 1024), np.float32))), exhausted, "max_params")
    refused(tally, "spec over max_params (CompileSpec)", lambda: stub.CompileSpec(pb.CompileSpecRequest(spec=spec_source(OVER_PARAMS))), exhausted, "max_params")
    refused(tally, "spec over max_params (Train)", lambda: stub.Train(train_request(OVER_PARAMS, "spirals")), exhausted, "max_params")
    refused(tally, "batch over max_batch_elements (Evaluate)", lambda: stub.Evaluate(evaluate(WIDE, TOO_MANY_ELEMENTS)), exhausted, "max_batch_elements")
    refused(tally, "batch over max_batch_elements (StreamEvaluate)", lambda: stub.StreamEvaluate(stream(WIDE, FITS[:8], TOO_MANY_ELEMENTS)), exhausted, "max_batch_elements")
    refused(tally, "request over max_message_mb (Evaluate)", lambda: stub.Evaluate(evaluate(WIDE, TOO_BIG_REQUEST)), exhausted, "larger than max")
    refused(tally, "request over max_message_mb (StreamEvaluate)", lambda: stub.StreamEvaluate(stream(WIDE, FITS[:8], TOO_BIG_REQUEST)), exhausted, "larger than max")
    refused(tally, "answer over max_message_mb (Evaluate)", lambda: stub.Evaluate(evaluate(WIDE, TOO_BIG_ANSWER)), exhausted, "max_message_mb")
    refused(tally, "answer over max_message_mb (StreamEvaluate)", lambda: stub.StreamEvaluate(stream(WIDE, FITS[:8], TOO_BIG_ANSWER)), exhausted, "max_message_mb")

    for _ in range(CHURN_PER_ROUND):
        spec = {"name": "churn", "input_shape": [800], "layers": [{"type": "linear", "out_features": next(churn)}]}
        assert stub.Evaluate(evaluate(spec, np.ones((4, 800), np.float32))).output.shape[0] == 4
    tally.count(f"distinct specs past --cache-size {CACHE} (Evaluate)", "OK", CHURN_PER_ROUND)
    assert list(stub.Evaluate(evaluate(WIDE, FITS)).output.shape) == [len(FITS), 1024]
    tally.count("Evaluate within every limit (6 MB answer)", "OK")

    for call, run_id in running:
        finished = [event for event in call][-1].finished  # the time limit ends the run; the stream closes normally
        assert finished.status == pb.RUN_STATUS_CANCELLED and f"time limit of {TRAIN_SECONDS:g} s per run (max_train_seconds)" in finished.reason
        record = stub.GetModel(pb.GetModelRequest(model_id=run_id))
        assert record.status == pb.RUN_STATUS_CANCELLED and "max_train_seconds" in record.reason
        tally.count("Train past max_train_seconds", "cancelled, reason stored")
    ended = min(stub.GetModel(pb.GetModelRequest(model_id=run_id)).updated.ToNanoseconds() for _, run_id in running)
    for run_id in admitted:  # a slot frees only once its run is stored as ended
        assert stub.GetModel(pb.GetModelRequest(model_id=run_id)).created.ToNanoseconds() >= ended, "a third run was admitted while two were running"


@needs_proc
def test_every_limit_refuses_and_memory_comes_back(tmp_path: Path, budget: Any, tally: Any) -> None:
    rounds = budget.pick(1, 30)
    churn = itertools.cycle(CHURN_FEATURES)
    with server_process(tmp_path / "store", *LIMITS) as server, connect(server.address, **ROOMY) as stub:
        pid = server.process.pid
        tally.figure("RSS at start MiB", round(resident_mib(pid), 1))
        one_round(stub, tally, churn)  # warm-up: every path's buffers, threads and caches exist
        baseline = idle_mib(pid)
        started = time.monotonic()
        for _ in range(rounds):
            one_round(stub, tally, churn)
        tally.figure("rounds", rounds)
        tally.figure("seconds under pressure", round(time.monotonic() - started, 1))
        peak = peak_mib(pid)
        before_idle = resident_mib(pid)
        settled = idle_mib(pid, baseline + SETTLE_MIB)

        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert list(stub.Evaluate(evaluate(WIDE, FITS)).output.shape) == [len(FITS), 1024]

    for name, value in (("baseline after warm-up", baseline), ("peak (VmHWM)", peak), ("at the end of the last round", before_idle), ("settled", settled)):
        tally.figure(f"RSS {name} MiB", round(value, 1))
    tally.figure("RSS settled - baseline MiB", round(settled - baseline, 1))
    assert settled <= baseline + SETTLE_MIB, f"the server kept {settled - baseline:.0f} MiB over its baseline of {baseline:.0f} MiB"
