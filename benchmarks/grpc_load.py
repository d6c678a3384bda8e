"""Two loads for the gRPC benchmark that the harness's call-by-call timing does not cover.

``stream_peaks``: one StreamEvaluate call over many rows, reading the server's peak resident
memory (``VmHWM`` of its process) when given row counts have come back — memory that grows
with the stream shows as a rising peak. ``concurrent``: N clients, each on its own channel in
its own thread, calling Evaluate at once; per-call latencies, wall time and every error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from specbuilder.demo.server import ServerProcess
from specbuilder_client import Client, SpecbuilderError
from specbuilder_client.specs import SpecLike


def batches(x: np.ndarray, rows: int) -> Iterator[np.ndarray]:
    """``rows`` rows in batches of ``len(x)`` (the last one shorter), every batch a slice of ``x``."""
    for begin in range(0, rows, len(x)):
        yield x[:min(len(x), rows - begin)]


def stream_peaks(client: Client, server: ServerProcess, spec: SpecLike, x: np.ndarray, marks: Sequence[int]) -> dict[int, int]:
    """Stream ``max(marks)`` rows; the server's ``VmHWM`` (KiB) once each mark's rows have come back, and at 0."""
    peaks = {0: server.memory_kib()["VmHWM"]}
    pending = sorted(marks)
    done = 0
    for output in client.evaluate_stream(spec, batches(x, pending[-1])):
        done += len(output)
        while pending and done >= pending[0]:
            peaks[pending.pop(0)] = server.memory_kib()["VmHWM"]
    return peaks


@dataclass
class LoadResult:
    """What N concurrent clients saw."""

    latencies_s: list[float]
    wall_s: float
    errors: list[str]


def concurrent(address: str, spec: SpecLike, x: np.ndarray, clients: int, calls: int) -> LoadResult:
    """``clients`` clients call Evaluate ``calls`` times each, all released at once (after one warm-up call each)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1, timeout=120)  # a client that fails its warm-up breaks it, not hangs it

    def work() -> None:
        with Client(address) as client:
            client.evaluate(spec, x)
            start.wait()
            mine: list[float] = []
            for _ in range(calls):
                began = time.perf_counter()
                try:
                    client.evaluate(spec, x)
                except SpecbuilderError as error:
                    with lock:
                        errors.append(str(error))
                mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return LoadResult(latencies, time.perf_counter() - began, errors)
