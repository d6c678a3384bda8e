"""``python -m benchmarks [--quick] [--only NAME] [--threads N] [--device DEVICE] [--out FILE]``.

Discovers every ``benchmarks/bench_<name>.py``, calls its ``run(quick)`` and prints the
returned tables as Markdown (and writes them all to FILE when given). ``--only`` takes a
name with or without the ``bench_`` prefix and may be repeated. ``--device cuda`` runs the
benchmarks whose ``run`` takes a ``device`` (statistics, training, the gRPC service) there.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import sys
import time
from pathlib import Path

import benchmarks
from benchmarks.harness import DEFAULT_THREADS, Table, configure
from specbuilder.devices import resolve_device

PREFIX = "bench_"


def discover() -> list[str]:
    """Names (without the prefix) of the benchmark modules in this package, sorted."""
    return sorted(info.name[len(PREFIX):] for info in pkgutil.iter_modules(benchmarks.__path__) if info.name.startswith(PREFIX))


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and return 0; bad arguments exit with status 2 (argparse)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions: a smoke run, not figures to quote")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    parser.add_argument("--threads", type=int, metavar="N", default=DEFAULT_THREADS, help=f"torch.set_num_threads (default {DEFAULT_THREADS})")
    parser.add_argument("--device", default="cpu", help="'cpu' (default), 'cuda', 'cuda:N' or 'auto', for the benchmarks that take one")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the tables to FILE as Markdown")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")

    available = discover()
    selected = [name.removeprefix(PREFIX) for name in args.only] if args.only else available
    unknown = sorted(set(selected) - set(available))
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)}; available: {', '.join(available)}")

    header = f"_{configure(args.threads, device)}{', quick run' if args.quick else ''}_\n"
    print(header, flush=True)
    tables: list[Table] = []
    for name in selected:
        started = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{PREFIX}{name}")
        takes_device = "device" in inspect.signature(module.run).parameters
        if device.type != "cpu" and not takes_device:
            print(f"<!-- {PREFIX}{name}: runs on the CPU only -->", file=sys.stderr, flush=True)
        for table in module.run(args.quick, device=device) if takes_device else module.run(args.quick):
            print(table.markdown(), flush=True)
            tables.append(table)
        print(f"<!-- {PREFIX}{name}: {time.perf_counter() - started:.1f} s -->\n", file=sys.stderr, flush=True)
    if args.out:
        args.out.write_text(header + "\n" + "\n".join(table.markdown() for table in tables), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
