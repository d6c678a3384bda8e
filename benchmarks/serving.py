"""What the baseline servers of the gRPC benchmark share: start-up in their own process, and a stop on SIGTERM.

Each baseline server module (``grpc_floor``, ``grpc_repeated``) is run as
``python -m benchmarks.<module> --port 0``: it serves until SIGTERM and prints
``listening on 127.0.0.1:PORT`` first, like ``specbuilder serve``, so
``specbuilder.demo.server.listening_process`` starts and stops all of them alike.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc

from specbuilder.demo.server import ServerProcess, listening_process

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 16
"""Threads serving calls: ``specbuilder serve``'s default, so every server has the same pool."""
MESSAGE_LIMIT = 64 * 1024 * 1024
"""Largest message either way (``specbuilder serve``'s default)."""


def run_until_signalled(handlers: list[grpc.GenericRpcHandler], port: int) -> None:
    """Serve ``handlers`` on 127.0.0.1:``port``, print where, stop on SIGTERM or SIGINT."""
    server = grpc.server(
        ThreadPoolExecutor(WORKERS),
        handlers=handlers,
        options=[("grpc.max_receive_message_length", MESSAGE_LIMIT), ("grpc.max_send_message_length", MESSAGE_LIMIT)],
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stop.set())
    server.start()
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    while not stop.wait(1.0):
        pass
    server.stop(1.0).wait()


def serve_model(description: str, handler: Callable[[str], grpc.GenericRpcHandler]) -> None:
    """The command line of a baseline server that runs the benchmark's model: ``--port`` and ``--device``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    run_until_signalled([handler(args.device)], args.port)


@contextmanager
def baseline_server(module: str, folder: Path, threads: int, *flags: str) -> Iterator[ServerProcess]:
    """``python -m benchmarks.<module> --port 0 *flags`` in its own process with ``threads`` torch threads."""
    command = [sys.executable, "-m", f"benchmarks.{module}", "--port", "0", *flags]
    with listening_process(command, log=folder / f"{module}.log", env={"OMP_NUM_THREADS": str(threads)}, cwd=ROOT) as server:
        yield server


def channel(address: str) -> grpc.Channel:
    """A plaintext channel allowing the same message size as the servers."""
    return grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", MESSAGE_LIMIT), ("grpc.max_send_message_length", MESSAGE_LIMIT)])
