"""Issue 4 figures: the gRPC service against in-process PyTorch and against gRPC's own floor.

The workload is an MLP 784-256-256-10 on batches of 1024 rows (3.2 MB of float32 in, 40 KB
out). Every server runs in its own process, started as users start it, with the same torch
thread count as this process (``OMP_NUM_THREADS``): ``specbuilder serve --shared-memory --shared-memory-over-grpc``
(which serves inline tensors as usual; shared memory is only allowed in addition), gRPC's
floor (``grpc_floor``: raw bytes in, 40 KB out, no protobuf), the minimal hand-written service
the issue measured (``grpc_minimal``: raw bytes, the forward on gRPC's thread) and the
``repeated float`` design (``grpc_repeated``). The baseline is the forward pass of the same MLP compiled in this
process, numpy in and out, under ``inference_mode``. "Forward + floor" is that forward and
then a floor call with the same 3.2 MB, back to back: a service that added nothing to gRPC.
Service calls go through ``specbuilder_client.Client``, the spec sent with every call, as
users call it; shared-memory calls over gRPC and over the server's local socket, the batch
copied into the client's region or filled in place (``Client.shared_array``). Training compares ``Client.train`` with ``specbuilder.train`` in this process.
With ``--device cuda`` the server (``--device cuda``), the minimal and ``repeated float`` servers, the
in-process forward (numpy in, ``.to(device)``, ``.cpu()`` out: synchronous) and both training
sides run on the GPU; the floor has no model and stays as it is.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import specbuilder
from benchmarks import grpc_floor, grpc_minimal, grpc_repeated
from benchmarks.grpc_load import batches, concurrent, stream_peaks
from benchmarks.grpc_workload import BATCH, MLP, SEED, batch
from benchmarks.harness import MIN_SAMPLES, Table, Timing, compare, format_ns, gc_paused, measure
from benchmarks.serving import baseline_server, channel
from specbuilder.builder import SpecBuilder
from specbuilder.compiler import compile_spec
from specbuilder.demo.server import ServerProcess, serve_subprocess
from specbuilder_client import Client

STREAM_ROWS = 200_000
STREAM_MARK = 50_000
"""The server's peak memory after this many streamed rows is compared with its peak at the end."""
FLAT_MIB = 16
"""Peak growth from ``STREAM_MARK`` to ``STREAM_ROWS`` rows that still counts as flat: five
batches' worth, against the 470 MB that stream through in between."""
CLIENTS = 8
BLOCK = 5
"""Calls in a row per side and round in ``rotate``, after one untimed call."""
BURST_GAP_S = 0.005
"""Events that arrive closer together than this came in one delivery (the server sends them in bursts)."""
TRAIN_DATA = "digits"
TRAIN_SPEC: dict[str, Any] = (
    SpecBuilder([64], name="digits-mlp").linear(128, activation="relu").linear(128, activation="relu").linear(10).to_dict()
)
LONGER_EPOCHS = 60
"""A second run, three times as long: it tells what the service adds once per run (the call, the
store's records, the weights' fsynced file: about 8 ms) from what grows with the run (the client,
gRPC and the event stream taking turns on the cores the training's OpenMP team keeps busy)."""
TRAIN_CONFIG: dict[str, Any] = {"epochs": 20, "batch_size": 64, "lr": 0.01, "seed": SEED, "device": "cpu", "stats_every": 10}


def local_forward(device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """The baseline: the MLP compiled in this process; a batch through it, numpy in and out
    (on CUDA the copy back waits for the device, so every call ends with its work done)."""
    model = compile_spec(MLP, device=device, seed=SEED).eval()

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x).to(device)).cpu().numpy()

    return forward


def rotate(sides: dict[str, Callable[[], object]], repeat: int, warmup: int, budget_s: float) -> tuple[dict[str, Timing], dict[str, list[object]]]:
    """Like the harness's ``compare``, for any number of sides and in blocks: ``repeat`` rounds,
    each calling every side ``BLOCK`` times in a row after one untimed call, starting one further
    along the list each round, so drift hits all sides alike. Returns each side's timing and what
    its timed calls returned.

    Why blocks, not one call per side in turn: a forward leaves its OpenMP workers spinning for a few
    milliseconds after it returns (libgomp's default wait policy), in this process or the server's,
    and on a 2-core box they hold a core while whatever comes next runs. Call by call, every side
    paid for the one before it: measured in one run, the in-process forward took 8.8 ms (4.4 ms in
    blocks) and the floor 6.2 ms (4.0 ms), right after an Evaluate whose server was still spinning,
    which flattered every ratio. The untimed call pays for what the previous side left behind; the
    timed ones pay only for what their own calls leave, as a caller in a loop does.
    """
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    returned: dict[str, list[object]] = {name: [] for name in names}
    deadline = time.perf_counter() + budget_s
    with gc_paused():
        for round_index in range(repeat):
            for offset in range(len(names)):
                name = names[(round_index + offset) % len(names)]
                sides[name]()
                for _ in range(BLOCK):
                    started = time.perf_counter_ns()
                    returned[name].append(sides[name]())
                    samples[name].append(time.perf_counter_ns() - started)
            if round_index + 1 >= MIN_SAMPLES and time.perf_counter() > deadline:
                break
    return {name: Timing(tuple(values)) for name, values in samples.items()}, returned


def summed(first: Timing, second: Timing) -> Timing:
    """Sums of two sides' samples taken in the same rounds (``rotate``), the n-th of each block with the n-th."""
    return Timing(tuple(a + b for a, b in zip(first.samples_ns, second.samples_ns)))


def unary(server: ServerProcess, folder: Path, threads: int, x: np.ndarray, quick: bool, device: torch.device) -> Table:
    """One Evaluate call: against the forward, against forward + floor, shared memory, repeated float."""
    repeat, warmup, budget = (4, 1, 6.0) if quick else (40, 2, 90.0)
    forward = local_forward(device)
    payload = x.tobytes()
    one_row = x[:1]
    table = Table(
        f"gRPC service: one call, MLP 784-256-256-10, batch 1024 ({_where(device)})",
        note=("3.2 MB in, 40 KB out; every server in its own process. Plain side: the forward in this process; "
              "\"forward + floor\" adds, round by round, one call to gRPC's floor (a bare grpcio server in its own "
              "process taking raw bytes, answering 40 KB). The minimal service is the issue's reference: raw bytes in "
              "and out, the forward on gRPC's thread, nothing checked. Shared memory: over gRPC (`local_socket=False`), and "
              "on the server's local Unix socket with the batch copied into the client's region or already in a "
              "region (`Client.shared_array`). Forward, floor, minimal service and the four Evaluate designs are timed "
              f"in turn, round by round, each {BLOCK} calls in a row after one untimed call. Ratio = service call / plain side."),
    )
    with baseline_server("grpc_floor", folder, threads) as floor_server, \
            baseline_server("grpc_minimal", folder, threads, "--device", str(device)) as minimal_server, \
            baseline_server("grpc_repeated", folder, threads, "--device", str(device)) as repeated_server, \
            channel(floor_server.address) as floor_channel, channel(minimal_server.address) as minimal_channel, \
            channel(repeated_server.address) as repeated_channel, \
            Client(server.address) as client, Client(server.address, shared_memory=True, local_socket=False) as shared, \
            Client(server.address, shared_memory=True) as local:
        floor, minimal = grpc_floor.caller(floor_channel), grpc_minimal.caller(minimal_channel)
        repeated = grpc_repeated.caller(repeated_channel)
        in_place = local.shared_array(x.shape, x.dtype)
        in_place[...] = x
        for output in (client.evaluate(MLP, x).outputs, shared.evaluate(MLP, x).outputs, local.evaluate(MLP, x).outputs, minimal(x), repeated(x)):
            assert output is not None and output.shape == (len(x), 10), "every design answers the batch's logits"
        assert local.local_socket is not None and shared.local_socket is None, "one client on the local socket, one on gRPC"
        timed, returned = rotate({
            "forward": lambda: forward(x),
            "floor": lambda: floor(payload),
            "minimal": lambda: minimal(x),
            "evaluate": lambda: client.evaluate(MLP, x).compute_seconds,
            "shared": lambda: shared.evaluate(MLP, x).compute_seconds,
            "local": lambda: local.evaluate(MLP, x).compute_seconds,
            "in place": lambda: local.evaluate(MLP, in_place).compute_seconds,
        }, repeat, warmup, budget)
        base = summed(timed["forward"], timed["floor"])
        table.figure("gRPC floor alone: 3.2 MB raw bytes in, 40 KB out", str(timed["floor"]))
        table.figure("gRPC floor alone: an empty request in, 40 KB out (the fixed cost of any call)",
                     str(measure(lambda: floor(b""), repeat=200, warmup=20, budget_s=budget / 10)))
        table.figure("Evaluate of one row (the fixed cost of a call)", str(measure(lambda: client.evaluate(MLP, one_row), repeat=200, warmup=20, budget_s=budget / 10)))
        table.figure("the server's own forward in those calls (`compute_seconds`), inline / shared memory / local socket / in place",
                     " / ".join(format_ns(statistics.median(returned[side]) * 1e9) for side in ("evaluate", "shared", "local", "in place")),
                     baseline=f"in process: {format_ns(timed['forward'].median_ns)}")
        table.ratio("minimal hand-written grpcio service (raw bytes; the issue's reference) vs in-process forward", timed["forward"], timed["minimal"])
        table.ratio("Evaluate vs in-process forward", timed["forward"], timed["evaluate"], 2.2)
        table.ratio("Evaluate vs the minimal hand-written service", timed["minimal"], timed["evaluate"], 1.1)
        table.ratio("Evaluate vs forward + floor", base, timed["evaluate"])
        table.ratio("Evaluate, shared memory over gRPC (`local_socket=False`) vs in-process forward", timed["forward"], timed["shared"])
        table.ratio("Evaluate, shared memory over gRPC vs forward + floor", base, timed["shared"], 1.0)
        table.ratio("Evaluate, shared memory on the local socket (the batch copied into the region) vs in-process forward", timed["forward"], timed["local"])
        table.ratio("Evaluate, shared memory on the local socket, the batch placed in the region (`Client.shared_array`) vs in-process forward",
                    timed["forward"], timed["in place"], 1.2)
        designs, _ = rotate({"forward": lambda: forward(x), "repeated": lambda: repeated(x)}, max(2, repeat // 4), 1, budget / 3)
        table.ratio("`repeated float` design (hand-written grpcio service) vs in-process forward", designs["forward"], designs["repeated"])
    return table


def streaming(server: ServerProcess, x: np.ndarray, quick: bool, device: torch.device) -> Table:
    """StreamEvaluate (peak memory over 200k rows, throughput) and 8 concurrent clients."""
    rows, repeat, calls = (STREAM_MARK, 2, 4) if quick else (STREAM_ROWS, 5, 25)
    forward = local_forward(device)
    table = Table(
        f"gRPC service: StreamEvaluate and concurrent clients ({_where(device)})",
        note=(f"Same MLP, batches of {BATCH} rows. Memory: the server process's peak resident memory (`VmHWM` in "
              f"`/proc/<pid>/status`) during one stream of {STREAM_ROWS:,} rows, read as the rows come back. Throughput: "
              f"a stream of {rows:,} rows against the in-process forward over the same batches. Concurrency: "
              f"{CLIENTS} clients, each with its own channel and thread, {calls} Evaluate calls each, all at once."),
    )
    with Client(server.address) as client:
        client.evaluate(MLP, x)  # compiled and cached before the first peak is read
        peaks = stream_peaks(client, server, MLP, x, (STREAM_MARK, STREAM_ROWS))
        growth = (peaks[STREAM_ROWS] - peaks[STREAM_MARK]) / 1024
        table.figure(
            f"server peak RSS after {STREAM_MARK // 1000}k → {STREAM_ROWS // 1000}k streamed rows",
            f"{peaks[STREAM_MARK] / 1024:.0f} → {peaks[STREAM_ROWS] / 1024:.0f} MiB ({growth:+.1f} MiB)",
            baseline=f"{peaks[0] / 1024:.0f} MiB before the stream", target=f"≤ +{FLAT_MIB} MiB", ok=growth <= FLAT_MIB,
        )

        def stream() -> None:
            for _ in client.evaluate_stream(MLP, batches(x, rows)):
                pass

        def plain() -> None:
            for part in batches(x, rows):
                forward(part)

        base, ours = compare(plain, stream, repeat=repeat, warmup=1)
        ratio = table.ratio(f"StreamEvaluate, {rows:,} rows: time vs in-process forward", base, ours)
        table.figure("StreamEvaluate throughput", f"{rows / ours.median_ns * 1e9:,.0f} rows/s ({1 / ratio:.2f}× in-process)",
                     baseline=f"{rows / base.median_ns * 1e9:,.0f} rows/s")
        single = measure(lambda: forward(x), repeat=20, warmup=3)
    load = concurrent(server.address, MLP, x, CLIENTS, calls)
    total = CLIENTS * calls
    latencies = sorted(load.latencies_s)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    throughput = total * len(x) / load.wall_s
    table.figure(f"{CLIENTS} concurrent clients: aggregate throughput",
                 f"{throughput:,.0f} rows/s ({throughput * single.median_ns / 1e9 / len(x):.2f}× one in-process caller)",
                 baseline=f"{len(x) / single.median_ns * 1e9:,.0f} rows/s")
    table.figure(f"{CLIENTS} concurrent clients: latency per call",
                 f"p50 {format_ns(statistics.median(latencies) * 1e9)}, p99 {format_ns(p99 * 1e9)}",
                 baseline=f"forward alone {format_ns(single.median_ns)}")
    table.figure(f"{CLIENTS} concurrent clients: errors", f"{len(load.errors)} of {total} calls", target="0", ok=not load.errors)
    return table


def training(server: ServerProcess, quick: bool, device: torch.device) -> Table:
    """``Client.train`` against ``specbuilder.train`` in this process: same spec, data and config."""
    repeat, warmup = (3, 1) if quick else (9, 2)
    config = {**TRAIN_CONFIG, "device": str(device)}
    table = Table(
        f"gRPC service: training ({_where(device)})",
        note=(f"One timed call is a whole run: {TRAIN_DATA} MLP 64-128-128-10, {config['epochs']} epochs (then {LONGER_EPOCHS}), batch "
              f"{config['batch_size']}, statistics every {config['stats_every']} steps, on {'CPU' if device.type == 'cpu' else device}. Plain side: "
              "`specbuilder.train` in this process. Service: `Client.train(...).result()`, which also streams every "
              "event and stores the run and its weights. Ratio of run time (target ≤ 1/0.95: ≥ 0.95× the speed). "
              "The fixed cost and the deliveries are read from one more run's event arrival times."),
    )
    longer = {**config, "epochs": LONGER_EPOCHS}
    with Client(server.address) as client:
        def remote(config: dict[str, Any]) -> None:
            result = client.train(TRAIN_SPEC, TRAIN_DATA, **config).result()
            assert result.status == "completed", result.reason

        def local(config: dict[str, Any]) -> None:
            assert specbuilder.train(TRAIN_SPEC, TRAIN_DATA, config).status == "completed"

        base, ours = compare(lambda: local(config), lambda: remote(config), repeat=repeat, warmup=warmup)
        table.ratio("train through the service vs `specbuilder.train` in process", base, ours, 1 / 0.95)
        longer_base, longer_ours = compare(lambda: local(longer), lambda: remote(longer), repeat=(repeat + 1) // 2, warmup=1)
        table.ratio(f"the same, {LONGER_EPOCHS} epochs: a run's fixed cost spread over {LONGER_EPOCHS // config['epochs']}× the steps",
                    longer_base, longer_ours, 1 / 0.95)
        began = time.perf_counter()
        arrivals = [(event.type, time.perf_counter() - began) for event in client.train(TRAIN_SPEC, TRAIN_DATA, **config)]
        deliveries = 1 + sum(later - earlier > BURST_GAP_S for (_, earlier), (_, later) in zip(arrivals, arrivals[1:]))
        table.figure("fixed cost of a run through the service; how its events arrive",
                     f"call → started event {format_ns(arrivals[0][1] * 1e9)}; {len(arrivals)} events in {deliveries} deliveries",
                     baseline=f"`train()` in process: {format_ns(base.median_ns)} a run")
    return table


def _where(device: torch.device) -> str:
    return "issue 4" if device.type == "cpu" else f"{device}, issue 6"


def run(quick: bool, device: torch.device = torch.device("cpu")) -> list[Table]:
    """The issue 4 tables (issue 6's on CUDA); every server is started here and stopped before returning."""
    threads = torch.get_num_threads()
    x = batch()
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as name:
        folder = Path(name)
        env = {"OMP_NUM_THREADS": str(threads)}
        with serve_subprocess(folder / "store", "--device", str(device), "--shared-memory", "--shared-memory-over-grpc", env=env) as server:
            stream_table = streaming(server, x, quick, device)  # first, while the server's peak memory is its own
            unary_table = unary(server, folder, threads, x, quick, device)
            train_table = training(server, quick, device)
    return [unary_table, stream_table, train_table]
