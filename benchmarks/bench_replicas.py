"""Issue 6 figures: one client balancing round-robin over 2 replicas against the same client on 1.

Two ``specbuilder serve`` processes over one store, each started as users start it, with this
process's torch thread count (``OMP_NUM_THREADS``). One client process: ``CALLERS`` threads
share one ``Client`` — on replica A's address alone, or on both addresses (gRPC's
``round_robin``) — and call Evaluate back to back. The workload is the gRPC benchmark's MLP
784-256-256-10 (spec sent with every call), on batches of 1024 rows (compute-bound) and of one
row (the fixed cost of a call: gRPC, protobuf and Python on both sides).

The two sides run in short alternating rounds, swapping which goes first, and the ratio is the
median over round pairs of (throughput with 2 replicas / with 1): each pair ran a few seconds
apart, so drift and a neighbour's load hit both alike. Beside it: the median throughput and the
latency percentiles over every call of each side, the CPU the client and the replicas used
(in cores: CPU seconds / wall seconds, from ``/proc``), the calls per CPU-second (what a call
costs, whatever share of a busy machine the processes got), and each replica's share of the
servers' CPU — how evenly round-robin spread the work.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.grpc_workload import MLP, batch
from benchmarks.harness import Row, Table, format_ns
from specbuilder.demo.server import ServerProcess, serve_subprocess
from specbuilder_client import Client

CALLERS = 8
REPLICAS = ("A", "B")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (``/proc/<pid>/stat``, every thread)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU time of this (the client's) process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Side:
    """What one configuration measured, round by round, and every call's latency."""

    throughputs: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    cores: list[float] = field(default_factory=list)
    """CPU used by the client and both replicas during a round, in cores."""
    server_cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REPLICAS, 0.0))

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def latency(self) -> str:
        return f"p50 {format_ns(self.percentile(50) * 1e9)}, p99 {format_ns(self.percentile(99) * 1e9)}"

    def shares(self) -> str:
        total = sum(self.server_cpu_s.values()) or 1.0
        return " / ".join(f"{name} {seconds / total:.0%}" for name, seconds in self.server_cpu_s.items())


def replica(store: Path, name: str, threads: int, stack: ExitStack) -> ServerProcess:
    """``specbuilder serve`` over ``store`` on a free port, stopped when ``stack`` closes; its stderr in ``<store>.<name>.log``."""
    log = store.parent / f"{store.name}.{name}.log"
    return stack.enter_context(serve_subprocess(store, "--device", "cpu", env={"OMP_NUM_THREADS": str(threads)}, log=log))


def one_round(client: Client, servers: dict[str, ServerProcess], x: np.ndarray, calls: int, side: Side) -> None:
    """``CALLERS`` threads, released together, each calling Evaluate ``calls`` times on ``client``."""
    start = threading.Barrier(CALLERS + 1, timeout=120)
    latencies: list[list[float]] = [[] for _ in range(CALLERS)]

    def work(mine: list[float]) -> None:
        start.wait()
        for _ in range(calls):
            began = time.perf_counter()
            client.evaluate(MLP, x)
            mine.append(time.perf_counter() - began)

    threads = [threading.Thread(target=work, args=(mine,)) for mine in latencies]
    for thread in threads:
        thread.start()
    before = {name: cpu_seconds(server.pid) for name, server in servers.items()}
    client_before = own_cpu_seconds()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    used = {name: cpu_seconds(server.pid) - before[name] for name, server in servers.items()}
    done = [latency for mine in latencies for latency in mine]
    if len(done) != CALLERS * calls:
        raise RuntimeError(f"{CALLERS * calls - len(done)} of {CALLERS * calls} calls failed (see the callers' tracebacks)")
    side.throughputs.append(len(done) / wall)
    side.latencies_s.extend(done)
    side.cores.append((sum(used.values()) + own_cpu_seconds() - client_before) / wall)
    for name, seconds in used.items():
        side.server_cpu_s[name] += seconds


def compare_sides(clients: Sequence[Client], servers: dict[str, ServerProcess], x: np.ndarray, rounds: int, calls: int) -> list[Side]:
    """Each client's ``Side``, from ``rounds`` alternating rounds after a warm-up that reaches every replica."""
    for client in clients:
        for _ in range(2 * len(servers)):  # round-robin spreads these: every replica compiles the MLP
            client.evaluate(MLP, x)
    sides = [Side() for _ in clients]
    for index in range(rounds):
        order = range(len(clients)) if index % 2 == 0 else reversed(range(len(clients)))
        for which in order:
            one_round(clients[which], servers, x, calls, sides[which])
    return sides


class ReplicaTable(Table):
    """The harness's table with columns for the two sides compared here."""

    HEADER = ("", "1 replica", "2 replicas, round_robin", "ratio", "target", "verdict")


def rows(table: Table, label: str, one: Side, two: Side) -> float:
    """The rows of one batch size; returns the ratio 2 replicas / 1 (median over round pairs)."""
    pairs = [b / a for a, b in zip(one.throughputs, two.throughputs)]
    ratio = statistics.median(pairs)
    table.rows.append(Row(f"{label}: calls/s, {CALLERS} callers (median of rounds)", f"{statistics.median(one.throughputs):,.1f}",
                          f"{statistics.median(two.throughputs):,.1f}", f"{ratio:.2f}×", "", ""))
    table.rows.append(Row(f"{label}: ratio in each round pair", "", ", ".join(f"{pair:.2f}" for pair in pairs), "", "", ""))
    table.rows.append(Row(f"{label}: latency per call", one.latency(), two.latency(), "", "", ""))
    table.rows.append(Row(f"{label}: CPU used, client + replicas (median of rounds)",
                          f"{statistics.median(one.cores):.2f} cores", f"{statistics.median(two.cores):.2f} cores", "", "", ""))
    efficiency = [[rate / cores for rate, cores in zip(side.throughputs, side.cores)] for side in (one, two)]
    table.rows.append(Row(f"{label}: calls per CPU-second, client + replicas (median of rounds)",
                          *(f"{statistics.median(side):,.1f}" for side in efficiency),
                          f"{statistics.median(b / a for a, b in zip(*efficiency)):.2f}×", "", ""))
    table.rows.append(Row(f"{label}: share of the replicas' CPU", one.shares(), two.shares(), "", "", ""))
    return ratio


def run(quick: bool) -> list[Table]:
    """The issue 6 table; both replicas are started here and stopped before returning."""
    threads = torch.get_num_threads()
    rounds, calls = (2, 3) if quick else (12, 6)
    table = ReplicaTable(
        "Replicas: one client, round-robin over 2 replicas vs 1 (issue 6)",
        note=(f"Two `specbuilder serve` processes over one store on this machine ({os.cpu_count()} CPUs), {threads} torch "
              f"threads each. One client process, {CALLERS} threads sharing one `Client`: on replica A alone or on both "
              "addresses with gRPC's `round_robin`. Evaluate of MLP 784-256-256-10, the spec sent with every call; "
              f"{rounds} alternating rounds per side of {CALLERS}×{calls} calls (batch 1024) or {CALLERS}×{calls * 25} "
              "(batch 1). Ratio = throughput with 2 replicas / with 1, the median over round pairs."),
    )
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as name, ExitStack() as stack:
        store = Path(name) / "store"
        servers = {replica_name: replica(store, replica_name, threads, stack) for replica_name in REPLICAS}
        one = stack.enter_context(Client(servers["A"].address))
        two = stack.enter_context(Client([server.address for server in servers.values()]))
        for label, rows_in_batch, calls_in_round in (("batch 1024", 1024, calls), ("batch 1", 1, calls * 25)):
            single, double = compare_sides((one, two), servers, batch(rows_in_batch), rounds, calls_in_round)
            rows(table, label, single, double)
    return [table]
