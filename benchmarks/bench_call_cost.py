"""Issue 16 figures: what a remote call adds to the work, for streams and for unary Evaluate.

The workload is ``grpc_workload``'s MLP 784-256-256-10 on batches of 1024 rows (3.2 MB of float32
in, 40 KB out), ``STREAM_BATCHES`` of them per stream. Every server runs in its own process with the
same torch thread count as this process: ``specbuilder serve --shared-memory``, gRPC's floor
(``grpc_floor``: raw bytes in, 40 KB out, a unary method and a bidirectional stream, no protobuf)
and the minimal hand-written service (``grpc_minimal``: raw bytes, the forward on gRPC's thread,
nothing checked: the same work as Evaluate with nothing of specbuilder's in it). The baseline is
the same MLP compiled in this process, numpy in and out, under ``inference_mode``.

- **Streams.** In-process forward over the batches; gRPC's bare stream carrying the same bytes
  (nothing computed), answering 40 KB per message as StreamEvaluate does or echoing the bytes
  back (the floor the issue set its target against); StreamEvaluate over gRPC, batches inline; StreamEvaluate from a
  shared-memory client (on the server's local socket, each batch copied into the stream's ring of
  regions); and the same with the batches already in shared memory (``Client.shared_array``).
  One sample is a whole stream; the sides take turns, the first one rotating each round.
  Targets: inline ≤ 0.85× (forward + echoing stream), adding the two round by round; shared memory
  ≥ 0.85× the in-process throughput (time ≤ 1/0.85 of it). Then the server's peak resident memory
  over one long stream, inline and through shared memory (``grpc_load.stream_peaks``): flat.
- **Unary.** Forward, floor, minimal service and Evaluate, for 1024 rows and for one row (the
  fixed cost of a call), in ``bench_grpc.rotate``'s blocks (why blocks: its docstring). Target:
  Evaluate ≤ 1.10× (forward + floor) at 1024 rows; the one-row and minimal-service rows say
  where that floor stands.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks import grpc_floor, grpc_minimal
from benchmarks.bench_grpc import FLAT_MIB, STREAM_MARK, STREAM_ROWS, local_forward, rotate, summed
from benchmarks.grpc_load import stream_peaks
from benchmarks.grpc_workload import BATCH, MLP, batch
from benchmarks.harness import Table, Timing, format_ns, gc_paused
from benchmarks.serving import baseline_server, channel
from specbuilder.demo.server import ServerProcess, serve_subprocess
from specbuilder_client import Client

STREAM_BATCHES = 100
STREAM_TARGET = 0.85
"""StreamEvaluate inline, time against forward + gRPC's bare stream; and shared memory, throughput against in process."""
UNARY_TARGET = 1.10
"""Evaluate against forward + gRPC's unary floor."""


def turns(sides: dict[str, Callable[[], object]], rounds: int, budget_s: float) -> dict[str, Timing]:
    """Each side once per round, the first one rotating, after one warm-up call each; stops early past ``budget_s``
    (three rounds at least). For calls long enough (a whole stream) that what the previous side left running
    (a spinning OpenMP team, a few milliseconds) is lost in them."""
    names = list(sides)
    for name in names:
        sides[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    deadline = time.perf_counter() + budget_s
    with gc_paused():
        for round_index in range(rounds):
            for offset in range(len(names)):
                name = names[(round_index + offset) % len(names)]
                started = time.perf_counter_ns()
                sides[name]()
                samples[name].append(time.perf_counter_ns() - started)
            if round_index >= 2 and time.perf_counter() > deadline:
                break
    return {name: Timing(tuple(values)) for name, values in samples.items()}


def stream_memory(server: ServerProcess, x: np.ndarray, table: Table, quick: bool) -> None:
    """The server's peak resident memory as one long stream's rows come back, inline and through shared memory."""
    marks = (STREAM_MARK // 5, STREAM_MARK) if quick else (STREAM_MARK, STREAM_ROWS)
    for name, shared in (("inline", False), ("through shared memory", True)):
        with Client(server.address, shared_memory=shared) as client:
            list(client.evaluate_stream(MLP, iter([x])))  # compiled and cached, and the socket found, before the first peak
            peaks = stream_peaks(client, server, MLP, x, marks)
        growth = (peaks[marks[1]] - peaks[marks[0]]) / 1024
        table.figure(f"server peak RSS, a stream {name}, after {marks[0] // 1000}k → {marks[1] // 1000}k rows",
                     f"{peaks[marks[0]] / 1024:.0f} → {peaks[marks[1]] / 1024:.0f} MiB ({growth:+.1f} MiB)",
                     baseline=f"{peaks[0] / 1024:.0f} MiB before the stream", target=f"≤ +{FLAT_MIB} MiB", ok=growth <= FLAT_MIB)


def streams(server_address: str, floor_address: str, x: np.ndarray, quick: bool) -> Table:
    batches = 10 if quick else STREAM_BATCHES
    rounds, budget = (3, 20.0) if quick else (15, 240.0)
    forward = local_forward(torch.device("cpu"))
    payload = x.tobytes()
    table = Table(
        "Streams: StreamEvaluate against the forward and gRPC's bare stream (issue 16)",
        note=(f"MLP 784-256-256-10, {batches} batches of {BATCH} rows per stream; every server in its own process. "
              "\"Forward + bare stream\" adds, round by round, the in-process forward over the batches and one stream of the "
              "same bytes through a bare grpcio bidirectional stream (nothing computed), which answers each message with "
              "40 KB as StreamEvaluate does, or echoes its bytes back as the issue's floor did. Shared memory: a shared-memory "
              "client, its stream on the server's local socket, each batch copied into the stream's ring of regions, or "
              "already in shared memory (`Client.shared_array`). One sample is a whole stream; the sides take turns."),
    )
    with channel(floor_address) as floor_channel, Client(server_address) as inline, Client(server_address, shared_memory=True) as local:
        bare_stream = grpc_floor.streamer(floor_channel)
        echo_stream = grpc_floor.streamer(floor_channel, grpc_floor.ECHO_METHOD)
        in_place = local.shared_array(x.shape, x.dtype)
        in_place[...] = x
        first = list(local.evaluate_stream(MLP, iter([x])))
        assert local._socket_path is not None and len(first) == 1, "the shared-memory client streams on the local socket"
        timed = turns({
            "forward": lambda: [forward(x) for _ in range(batches)],
            "bare stream": lambda: bare_stream(payload for _ in range(batches)),
            "echo": lambda: echo_stream(payload for _ in range(batches)),
            "inline": lambda: sum(1 for _ in inline.evaluate_stream(MLP, (x for _ in range(batches)))),
            "shared": lambda: sum(1 for _ in local.evaluate_stream(MLP, (x for _ in range(batches)))),
            "in place": lambda: sum(1 for _ in local.evaluate_stream(MLP, (in_place for _ in range(batches)))),
        }, rounds, budget)
    table.figure("gRPC's bare stream alone: the same bytes in, 40 KB answers; echoing the bytes back",
                 f"{timed['bare stream']}; {timed['echo']}")
    table.ratio("StreamEvaluate inline vs in-process forward + bare stream echoing the bytes (the issue's floor)",
                summed(timed["forward"], timed["echo"]), timed["inline"], STREAM_TARGET)
    table.ratio("StreamEvaluate inline vs in-process forward + bare stream with 40 KB answers (what StreamEvaluate carries)",
                summed(timed["forward"], timed["bare stream"]), timed["inline"])
    table.ratio("StreamEvaluate inline vs in-process forward", timed["forward"], timed["inline"])
    for side, what in (("shared", "batches copied into the ring"), ("in place", "batches in `shared_array`")):
        ratio = table.ratio(f"StreamEvaluate through shared memory ({what}) vs in-process forward", timed["forward"], timed[side],
                            round(1 / STREAM_TARGET, 2))
        table.figure(f"StreamEvaluate through shared memory ({what}): throughput",
                     f"{batches * len(x) / timed[side].median_ns * 1e9:,.0f} rows/s ({1 / ratio:.2f}× in process; target ≥ {STREAM_TARGET:.2f}×)",
                     baseline=f"{batches * len(x) / timed['forward'].median_ns * 1e9:,.0f} rows/s")
    return table


def unary(server_address: str, floor_address: str, minimal_address: str, x: np.ndarray, quick: bool) -> Table:
    repeat, warmup, budget = (4, 1, 10.0) if quick else (40, 2, 150.0)
    forward = local_forward(torch.device("cpu"))
    one = x[:1]
    payloads = {len(x): x.tobytes(), 1: one.tobytes()}
    table = Table(
        "Unary Evaluate against the forward and gRPC's floor (issue 16)",
        note=("MLP 784-256-256-10, one call of 1024 rows (3.2 MB in, 40 KB out) and of one row; every server in its own process. "
              "\"Forward + floor\" adds, round by round, the in-process forward and one call to gRPC's unary floor with the same "
              "bytes. The minimal hand-written service runs the same forward with nothing of specbuilder's (raw bytes, no checks, "
              "the forward on gRPC's thread): the floor of the same work. Each side 5 calls in a row after an untimed one, in turn."),
    )
    with channel(floor_address) as floor_channel, channel(minimal_address) as minimal_channel, Client(server_address) as client:
        floor, minimal = grpc_floor.caller(floor_channel), grpc_minimal.caller(minimal_channel)
        sides: dict[str, Callable[[], object]] = {}
        for rows, data in ((len(x), x), (1, one)):
            sides |= {f"forward {rows}": lambda data=data: forward(data), f"floor {rows}": lambda rows=rows: floor(payloads[rows]),
                      f"minimal {rows}": lambda data=data: minimal(data), f"evaluate {rows}": lambda data=data: client.evaluate(MLP, data)}
        timed, _ = rotate(sides, repeat, warmup, budget)
    for rows in (len(x), 1):
        base = summed(timed[f"forward {rows}"], timed[f"floor {rows}"])
        what = f"{rows} rows" if rows > 1 else "one row"
        table.figure(f"{what}: in-process forward; gRPC's floor", f"{timed[f'forward {rows}']}; {timed[f'floor {rows}']}")
        table.ratio(f"{what}: Evaluate vs forward + floor", base, timed[f"evaluate {rows}"], UNARY_TARGET if rows > 1 else None)
        table.ratio(f"{what}: minimal hand-written service (nothing of ours) vs forward + floor", base, timed[f"minimal {rows}"])
        table.ratio(f"{what}: Evaluate vs the minimal hand-written service", timed[f"minimal {rows}"], timed[f"evaluate {rows}"])
        table.figure(f"{what}: what a call adds to forward + floor (median against median)",
                     f"Evaluate {_signed(timed[f'evaluate {rows}'].median_ns - base.median_ns)}",
                     baseline=f"minimal service {_signed(timed[f'minimal {rows}'].median_ns - base.median_ns)}")
    return table


def _signed(ns: float) -> str:
    return ("−" if ns < 0 else "+") + format_ns(abs(ns))


def run(quick: bool) -> list[Table]:
    """The issue 16 tables; every server is started here and stopped before returning."""
    threads = torch.get_num_threads()
    x = batch()
    with tempfile.TemporaryDirectory(prefix="bench-call-cost-") as name:
        folder = Path(name)
        env = {"OMP_NUM_THREADS": str(threads)}
        with serve_subprocess(folder / "store", "--device", "cpu", "--shared-memory", env=env) as server, \
                baseline_server("grpc_floor", folder, threads) as floor_server, \
                baseline_server("grpc_minimal", folder, threads) as minimal_server:
            stream_table = streams(server.address, floor_server.address, x, quick)
            stream_memory(server, x, stream_table, quick)
            return [stream_table, unary(server.address, floor_server.address, minimal_server.address, x, quick)]


__all__ = ["run"]
