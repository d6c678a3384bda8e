"""Many clients at once against one server subprocess, for a fixed time: every call that should
succeed does, with the right answer, and the server's memory stays level.

``CLIENTS`` threads, each with its own channel, mix Evaluate, StreamEvaluate and Train (weights in
``MIX``) until the time is up: after a warm-up, ``budget.pick(15, 300)`` seconds. A Train refused
RESOURCE_EXHAUSTED because the pool is full is an expected refusal, counted apart; anything else
that fails is a failure. Every batch starts with the same probe rows, whose outputs must match
the ones seen before the load: a call never sees another call's data or a half-written answer.
The server's resident memory is sampled through the run: its level in the last quarter must not
have grown past where it was in the first, and once idle again it must come back to where it
was idle after the warm-up. Afterwards the server still answers SERVING and its store lists
every run whose training completed.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rss import SETTLE_MIB, RssSampler, idle_mib, needs_proc
from server_helpers import SPIRALS, batch, connect, server_process, spec_source, train_request
from specbuilder_wire.arrays import to_numpy
from specbuilder_wire.v1 import service_pb2 as pb
from specbuilder_wire.v1.service_pb2_grpc import ModelServiceStub as Stub

CLIENTS = 32
WARMUP_SECONDS = 2.0
CALL_TIMEOUT = 120.0
"""A call that takes this long hangs: it fails the test rather than the test hanging."""
MIX = {"Evaluate": 6, "StreamEvaluate": 3, "Train": 1}
"""Relative frequency of each kind of call."""
SPECS: list[dict[str, Any]] = [
    {"name": f"load-{width}", "input_shape": [32], "layers": [
        {"type": "linear", "out_features": width, "name": "fc1", "activation": "relu"},
        {"type": "linear", "out_features": 8, "name": "out"},
    ]}
    for width in (64, 256, 1024)
]
PROBE = np.random.default_rng(7).normal(size=(4, 32)).astype(np.float32)
"""The first rows of every batch sent: their outputs are known (``reference``) and must come back, to rounding."""
ROWS = (16, 256, 2048)
STREAM_BATCHES = 4
OK = "OK"
GROWTH_MIB = 96.0
"""How far the resident set in the last quarter of the run may sit above the first quarter. Under
load it moves with what is in flight (32 calls of up to 2,048 rows, 0.3-9 MB each with their
copies) and with what the arenas hold: 390-485 MiB within one 90 s run here, quarter means up
to 50 MiB apart with no trend. Over the soak's tens of thousands of calls a leak of a few kB a
call passes it; the idle comparison (``SETTLE_MIB``) checks the same without what is in flight."""


@dataclass
class Client:
    """What one client thread did: latencies by kind, outcomes, the runs it saw complete, failures."""

    seed: int
    latencies: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in MIX})
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    completed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def request_batch(rng: np.random.Generator) -> np.ndarray:
    rows = int(rng.choice(ROWS))
    return np.concatenate([PROBE, rng.normal(size=(rows - len(PROBE), 32)).astype(np.float32)])


def check_probe(output: Any, expected: np.ndarray, rows: int) -> None:
    values = to_numpy(output)
    assert values.shape == (rows, 8), values.shape
    np.testing.assert_allclose(values[: len(PROBE)], expected, rtol=1e-5, atol=1e-6)  # rounding may differ with the batch's size; another call's data would not be close


def evaluate(stub: Stub, rng: np.random.Generator, client: Client, reference: list[np.ndarray]) -> str:
    index = int(rng.integers(len(SPECS)))
    x, statistics = request_batch(rng), bool(rng.integers(2))
    answer = stub.Evaluate(pb.EvaluateRequest(spec=spec_source(SPECS[index]), input=batch(x), options=pb.EvaluateOptions(statistics=statistics)),
                           timeout=CALL_TIMEOUT)
    check_probe(answer.output, reference[index], len(x))
    assert bool(answer.stats) == statistics
    return OK


def stream_evaluate(stub: Stub, rng: np.random.Generator, client: Client, reference: list[np.ndarray]) -> str:
    index = int(rng.integers(len(SPECS)))
    batches = [request_batch(rng) for _ in range(STREAM_BATCHES)]

    def messages() -> Iterator[pb.StreamEvaluateRequest]:
        yield pb.StreamEvaluateRequest(start=pb.StreamEvaluateStart(spec=spec_source(SPECS[index]), options=pb.EvaluateOptions(statistics=True)))
        for x in batches:
            yield pb.StreamEvaluateRequest(batch=batch(x))

    answers = list(stub.StreamEvaluate(messages(), timeout=CALL_TIMEOUT))
    assert [a.output.batch_index for a in answers[:-1]] == list(range(STREAM_BATCHES))
    for answer, x in zip(answers, batches):
        check_probe(answer.output.output, reference[index], len(x))
    assert answers[-1].summary.rows == sum(map(len, batches)) and answers[-1].summary.stats
    return OK


def train(stub: Stub, rng: np.random.Generator, client: Client, reference: list[np.ndarray]) -> str:
    try:
        events = list(stub.Train(train_request(SPIRALS, "spirals", "load", epochs=2, batch_size=64, seed=int(rng.integers(1 << 30))),
                                 timeout=CALL_TIMEOUT))
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_concurrent_trains" in (error.details() or ""):
            return "RESOURCE_EXHAUSTED: the pool was full (expected)"
        raise
    assert events[-1].finished.status == pb.RUN_STATUS_COMPLETED, events[-1]
    client.completed.append(events[0].run_id)
    return OK


CALLS: dict[str, Callable[[Stub, np.random.Generator, Client, list[np.ndarray]], str]] = {
    "Evaluate": evaluate, "StreamEvaluate": stream_evaluate, "Train": train,
}


def run_client(address: str, client: Client, until: float, reference: list[np.ndarray]) -> None:
    """Calls of random kinds until ``until``; each one timed, its outcome counted, a failure kept with what it said."""
    rng = np.random.default_rng(client.seed)
    kinds = random.Random(client.seed)
    with connect(address) as stub:
        while time.monotonic() < until:
            kind = kinds.choices(list(MIX), weights=list(MIX.values()))[0]
            started = time.perf_counter()
            try:
                outcome = CALLS[kind](stub, rng, client, reference)
                if outcome == OK:
                    client.latencies[kind].append(time.perf_counter() - started)
                client.outcomes[(kind, outcome)] += 1
            except grpc.RpcError as error:
                client.outcomes[(kind, error.code().name)] += 1
                client.failures.append(f"{kind}: {error.code().name}: {error.details()}")
            except AssertionError as error:
                client.outcomes[(kind, "wrong answer")] += 1
                client.failures.append(f"{kind}: wrong answer: {error}")


def load(address: str, seconds: float, seed: int, reference: list[np.ndarray]) -> list[Client]:
    """``CLIENTS`` threads calling for ``seconds``; what each did."""
    clients = [Client(seed + index) for index in range(CLIENTS)]
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=run_client, args=(address, client, until, reference), name=f"load-client-{client.seed}") for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return clients


def percentile_ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else float("nan")


@needs_proc
def test_many_clients_mixing_calls(tmp_path: Path, budget: Any, tally: Any) -> None:
    seconds = budget.pick(15, 300)
    with server_process(tmp_path / "store") as server, connect(server.address) as stub:
        pid = server.process.pid
        reference = [to_numpy(stub.Evaluate(pb.EvaluateRequest(spec=spec_source(spec), input=batch(PROBE))).output) for spec in SPECS]
        warm = load(server.address, WARMUP_SECONDS, 0, reference)
        baseline = idle_mib(pid)
        with RssSampler(pid) as rss:
            clients = load(server.address, seconds, 1000, reference)
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        stored, token = {}, None
        while token != "":  # every page
            page = stub.ListModels(pb.ListModelsRequest(page_size=1000, page_token=token or ""))
            stored.update({record.id: record.status for record in page.models})
            token = page.next_page_token
        settled = idle_mib(pid, baseline + SETTLE_MIB)

    outcomes = sum((client.outcomes for client in clients), Counter())
    for (kind, outcome), n in outcomes.items():
        tally.count(kind, outcome, n)
    for kind in MIX:
        latencies = [value for client in clients for value in client.latencies[kind]]
        tally.figure(f"{kind} p50 ms", percentile_ms(latencies, 50))
        tally.figure(f"{kind} p99 ms", percentile_ms(latencies, 99))
    tally.figure("clients", CLIENTS)
    tally.figure("seconds", seconds)
    tally.figure("calls per second", round(sum(outcomes.values()) / seconds, 1))
    quarter = seconds / 4
    first, last = float(np.mean(rss.between(0, quarter))), float(np.mean(rss.between(seconds - quarter, seconds)))
    figures = {"RSS idle after warm-up": baseline, "RSS first quarter": first, "RSS last quarter": last, "RSS peak": rss.peak,
               "RSS idle after the run": settled, "RSS growth, last - first quarter": last - first, "RSS idle after - before": settled - baseline}
    for name, value in figures.items():
        tally.figure(f"{name} MiB", round(value, 1))

    failures = [failure for client in warm + clients for failure in client.failures]
    assert not failures, f"{len(failures)} calls failed, e.g. {failures[:5]}"
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    completed = [run_id for client in warm + clients for run_id in client.completed]
    assert completed and all(stored.get(run_id) == pb.RUN_STATUS_COMPLETED for run_id in completed)
    assert outcomes[("Evaluate", "OK")] and outcomes[("StreamEvaluate", "OK")]
    assert last <= first + GROWTH_MIB, f"the server grew from {first:.0f} to {last:.0f} MiB under steady load"
    assert settled <= baseline + SETTLE_MIB, f"idle again, the server kept {settled - baseline:.0f} MiB over its idle baseline of {baseline:.0f} MiB"
