"""``specbuilder demo``: the main job, end to end, in one command.

Starts ``specbuilder serve`` in a subprocess over a temporary store, then through the Python
client compiles and trains the tutorial network once per activation on ``spirals`` (same seed
and config for every row), printing one table row as each run finishes: accuracy, dead and
saturated hidden units, and the gradient reaching the first hidden layer. It writes a PNG of
the same numbers and stops the server gracefully. Neither torch nor the server load in this
process: everything runs on the server.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from specbuilder.cli.common import CommandError, count

if TYPE_CHECKING:
    from specbuilder.demo.experiment import Row

DEFAULT_OUT = Path("out/demo.png")
SERVER_ENV = {"OMP_NUM_THREADS": "1"}
"""One torch thread on the server: the network is 32 units wide, too small to split, so more
threads would only add their synchronization to every step."""
COLUMNS = (("activation", 12, "<"), ("accuracy", 8, ">"), ("dead %", 6, ">"), ("saturated %", 11, ">"), ("1st-layer grad norm", 19, ">"))
"""(header, width, alignment) of each table column."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to argparse's ``commands``."""
    from specbuilder.demo.experiment import EPOCHS

    demo = commands.add_parser("demo", help="the main job: a server, the tutorial network trained per activation, one table", description=(
        "Start a server in a subprocess (temporary store), train the tutorial network once per activation on spirals "
        "through the Python client, print one table (accuracy, dead %%, saturated %%, first-layer gradient norm), "
        "write a PNG of it and stop the server."))
    demo.add_argument("--epochs", type=count, default=EPOCHS, metavar="N", help=f"epochs per run (default {EPOCHS}; fewer for a quick look)")
    demo.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="FILE.png", help=f"where the PNG goes (default {DEFAULT_OUT}; folders are created)")
    demo.set_defaults(run=run_demo)


def _line(cells: tuple[str, ...]) -> str:
    return "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, COLUMNS)).rstrip()


def _cells(row: Row) -> tuple[str, ...]:
    accuracy = "-" if row.accuracy is None else f"{100 * row.accuracy:.1f}%"
    grad = "-" if row.grad_norm is None else f"{row.grad_norm:.3g}"
    label = row.label if row.status == "completed" else f"{row.label} ({row.status})"
    return label, accuracy, f"{100 * row.dead:.1f}", f"{100 * row.saturated:.1f}", grad


def run_demo(args: argparse.Namespace) -> int:
    """Serve, train every row, print the table, draw the PNG, stop the server."""
    from specbuilder_client import Client, SpecbuilderError

    from specbuilder.demo.experiment import ACTIVATIONS, DATASET, HIDDEN, train_one, training_config
    from specbuilder.demo.figure import comparison
    from specbuilder.demo.server import ServerProcessError, serve_subprocess
    from specbuilder.plots import save

    if args.epochs == 0:
        raise CommandError("demo: --epochs must be >= 1")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"demo: cannot create {args.out.parent}: {error.strerror or error}") from None
    config = training_config(args.epochs)
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="specbuilder-demo-") as folder:
        try:
            with serve_subprocess(Path(folder) / "store", "--device", "cpu", env=SERVER_ENV) as server:
                print(f"server: `specbuilder serve` in a subprocess (pid {server.pid}) on {server.address}, temporary store")
                print(f"network: [2] -> linear {HIDDEN} -> ACT -> linear {HIDDEN} -> ACT -> linear 2 (logits, cross-entropy)")
                print(f"training: {DATASET}, {config['epochs']} epochs, batch {config['batch_size']}, Adam lr {config['lr']}, "
                      f"seed {config['seed']}, statistics every {config['stats_every']} steps; each run compiled and trained on the server")
                print()
                print(_line(tuple(header for header, _, _ in COLUMNS)))
                print(_line(tuple("-" * width for _, width, _ in COLUMNS)), flush=True)
                with Client(server.address) as client:
                    for label, activation in ACTIVATIONS:
                        rows.append(train_one(client, label, activation, config))
                        print(_line(_cells(rows[-1])), flush=True)
                print()
                print("dead %: hidden units that never fired on the validation set; saturated %: hidden outputs in the "
                      "activation's flat region;\n1st-layer grad norm: ||dL/dy|| at the first hidden activation, mean over "
                      "the training's statistics windows")
        except SpecbuilderError as error:
            raise CommandError(f"demo: the server refused a call: {error}") from None
        except ServerProcessError as error:
            raise CommandError(f"demo: {error}") from None
    print()
    print(f"server stopped cleanly (exit 0) after {time.perf_counter() - started:.0f} s")
    title = f"the tutorial network on {DATASET}, one run per activation ({config['epochs']} epochs, same seed)"
    save(comparison(rows, title), args.out)
    print(f"wrote {args.out}")
    return 0
