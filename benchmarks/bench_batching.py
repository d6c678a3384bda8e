"""Issue 16 figures: dynamic batching, 16 concurrent clients on one server, with it and without.

Three ``specbuilder serve`` processes on this machine, started as users start them, with this
process's torch thread count (``OMP_NUM_THREADS``) and ``--metrics-port 0``: one with
``--no-dynamic-batching``, one as it comes (dynamic batching, no delay: only calls that queued
while a forward ran merge), and one with ``--batch-delay-us DELAY_US`` (a call waits up to that
long for others). ``CLIENTS`` client processes (``load_client``: each its own interpreter and
channel, so no client-side lock is shared) call Evaluate of MLP 784-256-256-10 back to back, the
spec sent with every call, on batches of 1 row and of 32 rows, all released together.

The servers take turns in short rounds, the order rotating every round, so a neighbour's load
hits all alike; only one is called at a time. Per round: calls per second, forwards per second
(the server's ``specbuilder_forward_calls_count``, read from its ``/metrics`` before and after),
rows per second, and the CPU the server and the clients used (in cores: CPU seconds / wall
seconds, from ``/proc``). A ratio is the median over rounds of (rows/s of a batching server /
rows/s without batching in the same round); latency percentiles are over every call of a side. The
server's CPU per call (its cores / calls per second) says what a call costs it, whatever share of a
busy machine it got.

The floor: the same calls to the batching server (no delay) on a linear 784-10 model (the MLP's
bytes in and out, 3% of its compute), interleaved as a fourth side: what a call costs with next to
no forward, so (floor rows/s / rows/s without batching) is about the most batching could gain here.

Targets (issue 16): forwards/s ≤ 1/4 of calls/s with batching (batches really form), rows/s ≥
1.25× the server without it, and p99 latency no worse.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.bench_replicas import cpu_seconds
from benchmarks.harness import Row, Table, format_ns
from specbuilder.demo.server import ServerProcess, serve_subprocess

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 16
BATCHES = (1, 32)
DELAY_US = 1000
"""The third server's ``--batch-delay-us``: a millisecond, against calls of 10 ms and more under this load."""
START_DELAY = 0.3
"""Seconds from sending a round's commands to the clients' start: every client has its command by then."""


@dataclass
class Side:
    """One server and what it measured, round by round."""

    name: str
    server: ServerProcess
    metrics_url: str
    spec: str = "mlp"
    """The model its clients call (``grpc_workload.SPECS``)."""
    calls_per_s: list[float] = field(default_factory=list)
    forwards_per_s: list[float] = field(default_factory=list)
    rows_per_s: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    server_cores: list[float] = field(default_factory=list)
    client_cores: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def forwards(self) -> float:
        """Evaluate forwards the server has run so far."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as answer:
            text = answer.read().decode()
        return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == "specbuilder_forward_calls_count")


@contextmanager
def server(folder: Path, name: str, threads: int, *flags: str) -> Iterator[Side]:
    """``specbuilder serve`` with metrics and ``flags``, as a ``Side``."""
    with serve_subprocess(folder / name, "--device", "cpu", "--metrics-port", "0", *flags,
                          env={"OMP_NUM_THREADS": str(threads)}) as process:
        assert process.process.stdout is not None
        line = process.process.stdout.readline()  # "metrics on http://HOST:PORT/metrics", right after the first line
        if not line.startswith("metrics on "):
            raise RuntimeError(f"{name}: expected the metrics line, got {line!r}")
        yield Side(name, process, line.removeprefix("metrics on ").strip())


@contextmanager
def clients(count: int) -> Iterator[list[subprocess.Popen[str]]]:
    """``count`` client processes (``load_client``), closed when the block ends."""
    with ExitStack() as stack:
        started = [stack.enter_context(subprocess.Popen([sys.executable, "-m", "benchmarks.load_client"], cwd=ROOT, text=True,
                                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)) for _ in range(count)]
        try:
            yield started
        finally:
            for process in started:
                assert process.stdin is not None
                process.stdin.close()


def call_round(processes: list[subprocess.Popen[str]], side: Side, rows: int, calls: int) -> tuple[float, float, list[dict]]:
    """Every client makes ``calls`` calls of ``rows`` rows to ``side``, released together; (start, end, each client's answer)."""
    start = time.monotonic() + START_DELAY
    command = {"address": side.server.address, "spec": side.spec, "rows": rows, "calls": calls, "start": start}
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(json.dumps(command) + "\n")
        process.stdin.flush()
    answers = []
    for process in processes:
        assert process.stdout is not None
        answers.append(json.loads(process.stdout.readline()))
    errors = [error for answer in answers for error in answer["errors"]]
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed, the first: {errors[0]}")
    return start, max(answer["finished"] for answer in answers), answers


def measured_round(processes: list[subprocess.Popen[str]], side: Side, rows: int, calls: int) -> None:
    """One timed round against ``side``'s server."""
    forwards = side.forwards()
    server_cpu = cpu_seconds(side.server.pid)
    client_cpu = sum(cpu_seconds(process.pid) for process in processes)
    start, end, answers = call_round(processes, side, rows, calls)
    wall = end - start
    total = sum(len(answer["latencies"]) for answer in answers)
    side.calls_per_s.append(total / wall)
    side.rows_per_s.append(total * rows / wall)
    side.forwards_per_s.append((side.forwards() - forwards) / wall)
    side.latencies_s.extend(latency for answer in answers for latency in answer["latencies"])
    side.server_cores.append((cpu_seconds(side.server.pid) - server_cpu) / wall)
    side.client_cores.append((sum(cpu_seconds(process.pid) for process in processes) - client_cpu) / wall)


class BatchingTable(Table):
    """The harness's table with columns for the servers compared here."""

    HEADER = ("", "--no-dynamic-batching", "dynamic batching", "ratio", "target", "verdict")


def verdict(ok: bool) -> str:
    return "meets" if ok else "**misses**"


def rows_of(table: Table, label: str, alone: Side, merged: Side, floor: Side) -> None:
    """The rows of one batching server (``merged``) against the server without batching, for one batch size;
    ``floor`` is the batching server on the same calls with next to no forward."""
    median = statistics.median
    ratios = [b / a for a, b in zip(alone.rows_per_s, merged.rows_per_s)]
    ratio = median(ratios)
    table.rows.append(Row(f"{label}: calls/s (median of rounds)", f"{median(alone.calls_per_s):,.0f}",
                          f"{median(merged.calls_per_s):,.0f}", "", "", ""))
    per_call = median(f / c for f, c in zip(merged.forwards_per_s, merged.calls_per_s))
    table.rows.append(Row(f"{label}: forwards/s (median of rounds); forwards per call", f"{median(alone.forwards_per_s):,.0f}; "
                          f"{median(f / c for f, c in zip(alone.forwards_per_s, alone.calls_per_s)):.2f}",
                          f"{median(merged.forwards_per_s):,.0f}; {per_call:.2f}", "", "≤ 0.25 forwards per call", verdict(per_call <= 0.25)))
    table.rows.append(Row(f"{label}: rows/s (median of rounds); ratio in each round", f"{median(alone.rows_per_s):,.0f}",
                          f"{median(merged.rows_per_s):,.0f}; {', '.join(f'{r:.2f}' for r in ratios)}", f"{ratio:.2f}×",
                          "≥ 1.25×", verdict(ratio >= 1.25)))
    p99 = (alone.percentile(99), merged.percentile(99))
    table.rows.append(Row(f"{label}: latency per call, p50 / p99",
                          f"{format_ns(alone.percentile(50) * 1e9)} / {format_ns(p99[0] * 1e9)}",
                          f"{format_ns(merged.percentile(50) * 1e9)} / {format_ns(p99[1] * 1e9)}", f"{p99[1] / p99[0]:.2f}× (p99)",
                          "p99 ≤ 1.00×", verdict(p99[1] <= p99[0])))
    reach = median(f / a for a, f in zip(alone.rows_per_s, floor.rows_per_s))
    table.rows.append(Row(f"{label}: floor: rows/s of the same calls with next to no forward (linear 784-10, batching)",
                          f"{median(floor.rows_per_s):,.0f}", f"{median(merged.rows_per_s) / median(floor.rows_per_s):.2f} of the floor",
                          f"{reach:.2f}× (the most any batching could reach)", "", ""))
    table.rows.append(Row(f"{label}: CPU used, server; {CLIENTS} clients (median of rounds, cores)",
                          f"{median(alone.server_cores):.2f}; {median(alone.client_cores):.2f}",
                          f"{median(merged.server_cores):.2f}; {median(merged.client_cores):.2f}", "", "", ""))
    cost = [median(cores / calls * 1e3 for cores, calls in zip(side.server_cores, side.calls_per_s)) for side in (alone, merged)]
    table.rows.append(Row(f"{label}: server CPU per call (median of rounds)", f"{cost[0]:.2f} ms", f"{cost[1]:.2f} ms",
                          f"{cost[1] / cost[0]:.2f}×", "", ""))


def run(quick: bool) -> list[Table]:
    """The issue 16 tables, one per batching server; the servers and the clients are started here and stopped before returning."""
    threads = torch.get_num_threads()
    rounds, calls = (2, 10) if quick else (16, 40)
    load = os.getloadavg()[0]
    note = (f"Three `specbuilder serve` processes on this machine ({os.cpu_count()} CPUs), torch threads {threads} each: "
            f"`--no-dynamic-batching`, the default (dynamic batching, no delay) and `--batch-delay-us {DELAY_US}`. {CLIENTS} "
            f"client processes, each with its own `Client`, call Evaluate of MLP 784-256-256-10 back to back (the spec sent "
            f"with every call), {calls} calls each per round, released together; {rounds} rounds per server and batch size, "
            "the order rotating. Ratio = rows/s with batching / without, the median over rounds. Load average (1 min) "
            f"when the run began: {load:.1f}.")
    tables = {name: BatchingTable(f"Dynamic batching ({title}): {CLIENTS} concurrent clients, torch threads {threads} (issue 16)",
                                  note=note) for name, title in (("merged", "the default, no delay"), ("delayed", f"--batch-delay-us {DELAY_US}"))}
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as name, ExitStack() as stack:
        folder = Path(name)
        servers = {"alone": stack.enter_context(server(folder, "alone", threads, "--no-dynamic-batching")),
                   "merged": stack.enter_context(server(folder, "merged", threads)),
                   "delayed": stack.enter_context(server(folder, "delayed", threads, "--batch-delay-us", str(DELAY_US)))}
        processes = stack.enter_context(clients(CLIENTS))
        for rows in BATCHES:
            sides = {key: Side(key, side.server, side.metrics_url) for key, side in servers.items()}
            sides["floor"] = Side("floor", servers["merged"].server, servers["merged"].metrics_url, spec="linear")
            for side in sides.values():
                call_round(processes, side, rows, 3)  # warm-up: channels open, the model compiled
            keys = list(sides)
            for index in range(rounds):
                for key in keys[index % len(keys):] + keys[:index % len(keys)]:
                    measured_round(processes, sides[key], rows, calls)
            for key, table in tables.items():
                rows_of(table, f"{rows} row{'s' if rows > 1 else ''} per call", sides["alone"], sides[key], sides["floor"])
    return list(tables.values())
