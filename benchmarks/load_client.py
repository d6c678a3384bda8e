"""One client process of a load benchmark: Evaluate calls back to back on command, every latency reported.

``python -m benchmarks.load_client`` reads one JSON command per line on stdin,
``{"address": "HOST:PORT", "spec": "mlp", "rows": R, "calls": N, "start": T}``, makes ``N`` Evaluate
calls of that model of ``grpc_workload.SPECS`` on ``R`` rows, back to back, from ``time.monotonic() == T``
on (every process on the host reads the same clock, so clients released together start
together), and answers with one JSON line: ``{"latencies": [seconds, ...], "errors": [...],
"finished": T}``. It keeps one ``Client`` (one channel) per address. A process of its own: the
clients of a load share no interpreter lock with each other or with the benchmark, and it
imports no torch, so sixteen of them start in a few seconds.
"""

from __future__ import annotations

import json
import sys
import time

from benchmarks.grpc_workload import SPECS, batch
from specbuilder_client import Client, SpecbuilderError


def serve_commands() -> None:
    """Answer the commands on stdin until it closes."""
    clients: dict[str, Client] = {}
    for line in sys.stdin:
        command = json.loads(line)
        address = command["address"]
        client = clients.get(address) or clients.setdefault(address, Client(address))
        spec, x = SPECS[command["spec"]], batch(command["rows"])
        time.sleep(max(0.0, command["start"] - time.monotonic()))
        latencies: list[float] = []
        errors: list[str] = []
        for _ in range(command["calls"]):
            began = time.perf_counter()
            try:
                client.evaluate(spec, x)
            except SpecbuilderError as error:
                errors.append(str(error))
            latencies.append(time.perf_counter() - began)
        print(json.dumps({"latencies": latencies, "errors": errors, "finished": time.monotonic()}), flush=True)
    for client in clients.values():
        client.close()


if __name__ == "__main__":
    serve_commands()
