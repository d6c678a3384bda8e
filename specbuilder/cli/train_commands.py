"""``specbuilder train``, ``eval`` and ``models``: train a spec, run a model on a batch, manage stored models.

Each runs in-process, or on a server with ``--server HOST:PORT``, and prints the same either
way: the epoch table, then each monitored layer's final statistics (dead, saturated and zero
fractions, moments, gradient norm). torch loads only when a command runs locally; the training
config is checked here first either way, so its errors read ``path: message`` in both cases.
``train --nproc N`` trains here in N processes (``specbuilder.training.distributed``), and on
several nodes with torchrun's rendezvous flags. ``train --tensorboard DIR`` writes TensorBoard
event files as it trains, ``models tensorboard ID DIR`` those a stored record allows
(``specbuilder.tensorboard``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from specbuilder.cli.common import CommandError, add_max_params, load_spec, table
from specbuilder.cli.plot_commands import check_out, write_figure
from specbuilder.cli.remote import add_server_options, connect
from specbuilder.cli.reports import as_dicts, history_table, last_accuracy, number, record_text, stats_table, when
from specbuilder.cli.stores import add_store_option, open_store, store_errors, store_path
from specbuilder.datasets import DATASETS, DataError, Dataset, as_dataset
from specbuilder.errors import SpecError
from specbuilder.spec import STYLES, ModelSpec
from specbuilder.training.config import ConfigError, TrainConfig, parse_config

if TYPE_CHECKING:
    from torch import nn

    from specbuilder.tensorboard import EventWriter
    from specbuilder.training.distributed import Launch

CONFIG_FLAGS: tuple[tuple[str, type, str, str], ...] = (
    ("epochs", int, "N", "passes over the training set"),
    ("batch_size", int, "N", "samples per optimizer step (per process with --nproc)"),
    ("lr", float, "X", "learning rate"),
    ("optimizer", str, "NAME", "optimizer name (its parameters go in --config)"),
    ("loss", str, "NAME", "loss name (default: chosen from the data and the model's last layer)"),
    ("seed", int, "N", "initialization, split, shuffling, built-in data"),
    ("stats_every", int, "N", "activation statistics every N training steps (0: off)"),
    ("device", str, "DEVICE", "'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ("style", str, "STYLE", "compile as 'sequential' or 'functional'"),
    ("amp", str, "bf16|fp16", "mixed precision (autocast; fp16 adds a grad scaler); statistics stay float32"),
)
"""TrainConfig fields with a flag of their own: (field, argparse type, metavar, help). A flag overrides --config."""
WATCH_STATS_EVERY = 10
"""``--plot`` or ``--tensorboard`` without a ``stats_every`` setting take statistics every this many steps."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train``, ``eval`` and ``models`` to argparse's ``commands``."""
    _register_train(commands)
    _register_eval(commands)
    _register_models(commands)


def _register_train(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = commands.add_parser("train", help="train a spec on a dataset; epoch and layer tables, optional store and plot", description=(
        "Train a spec with a live progress bar, then print the epoch table and each monitored layer's final statistics. "
        "Flags override the --config file; every config problem is reported as 'path: message'."))
    train.add_argument("spec", metavar="SPEC", help="JSON spec file")
    train.add_argument("--data", required=True, metavar="NAME|FILE.npz",
                       help=f"a built-in dataset ({', '.join(DATASETS)}) or an .npz file with arrays x and y")
    for name, kind, metavar, text in CONFIG_FLAGS:
        train.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, metavar=metavar, help=text)
    train.add_argument("--config", type=Path, metavar="FILE.json", help="a TrainConfig as a JSON object (see the training docs)")
    add_store_option(train, help="save the trained model in this model store (a directory, or postgresql://... with --weights) and print its id")
    train.add_argument("--name", help="the stored model's name (default: the spec's)")
    train.add_argument("--plot", type=Path, metavar="FILE.png", help=(
        f"write final activation histograms and dead/saturated fractions over training (statistics every {WATCH_STATS_EVERY} steps unless set)"))
    train.add_argument("--tensorboard", type=Path, metavar="DIR", help=(
        "write TensorBoard event files to DIR as training goes: epoch loss, validation loss, accuracy, learning rate; "
        f"each statistics window's activation histograms, dead and saturated fractions, gradient norms (every "
        f"{WATCH_STATS_EVERY} steps unless set); the final statistics. DIR must hold no event files yet"))
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_distributed_options(train)
    add_max_params(train)
    add_server_options(train)
    train.set_defaults(run=run_train)


DISTRIBUTED_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-id")


def _add_distributed_options(train: argparse.ArgumentParser) -> None:
    """``--nproc`` and torchrun's multi-node flags."""
    ranks = train.add_argument_group("distributed training", (
        "Train one model in several processes with PyTorch's DistributedDataParallel, launched by torchelastic (what "
        "torchrun runs): gloo on CPU, NCCL with one GPU per process on CUDA. --batch-size is per process, so a step "
        "takes nproc x nnodes x batch-size samples. On several nodes run the same command on each, with the same "
        "--nnodes, --rdzv-endpoint and --rdzv-id; only the node holding rank 0 saves to --store."))
    ranks.add_argument("--nproc", type=int, metavar="N",
                       help="processes (ranks) on this node, like torchrun's --nproc-per-node; sets world_size to N x --nnodes")
    ranks.add_argument("--nnodes", type=int, metavar="M", help="nodes taking part (default 1)")
    ranks.add_argument("--node-rank", type=int, metavar="K", help=(
        "this node's rank, 0..M-1, for torchrun's static rendezvous (node 0, at the endpoint's HOST, holds rank 0); "
        "without it nodes are ranked as they join"))
    ranks.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help=(
        "where the nodes meet, required with --nnodes > 1; the node at HOST serves the rendezvous (default for one node: "
        "a free 127.0.0.1 port)"))
    ranks.add_argument("--rdzv-id", metavar="ID", help="the run's id, the same on every node (default 'specbuilder')")


def _register_eval(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluate = commands.add_parser("eval", help="run a spec or a stored model on a batch from an .npy file", description=(
        "Run a batch through a spec (randomly initialized with --seed) or a stored model, print the output's shape and "
        "summary, and with --stats each monitored layer's activation statistics."))
    model = evaluate.add_mutually_exclusive_group(required=True)
    model.add_argument("spec", nargs="?", metavar="SPEC", help="JSON spec file")
    model.add_argument("--model", metavar="ID", help="a stored model's id")
    evaluate.add_argument("--input", required=True, type=Path, metavar="FILE.npy", help="the batch: shape [N, *input_shape]")
    evaluate.add_argument("--output", type=Path, metavar="FILE.npy", help="save the outputs here")
    evaluate.add_argument("--stats", action="store_true", help="print per-layer activation statistics")
    evaluate.add_argument("--seed", type=int, metavar="N", help="initialization of a SPEC (default 0): the same weights here and on any --server")
    evaluate.add_argument("--style", choices=STYLES, default="sequential", help="compile as nn.Sequential or a functional forward")
    evaluate.add_argument("--device", default="auto", help="'auto' (default), 'cpu', 'cuda' or 'cuda:N'")
    evaluate.add_argument("--amp", choices=("bf16", "fp16"), help=(
        "mixed precision: the forward under autocast in this dtype, outputs in it (bfloat16 saved as float32); "
        "statistics stay float32"))
    add_store_option(evaluate)
    add_max_params(evaluate)
    add_server_options(evaluate)
    evaluate.set_defaults(run=run_eval)


def _register_models(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = commands.add_parser("models", help="list, show or delete stored models; write one's TensorBoard events", description=(
        "The model store: 'list' tables every model, 'show ID' prints one record, 'rm ID' deletes one, "
        "'tensorboard ID DIR' writes its record as TensorBoard event files."))
    actions = models.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="a table of stored models: id, name, status, params, created, accuracy")
    listing.add_argument("--status", help="only models with this status (completed, diverged, cancelled, ...)")
    show = actions.add_parser("show", help="one record: spec summary, config, history, final statistics")
    show.add_argument("id", metavar="ID")
    remove = actions.add_parser("rm", help="delete a stored model")
    remove.add_argument("id", metavar="ID")
    board = actions.add_parser("tensorboard", help="write a stored model's epoch metrics and final statistics as TensorBoard event files",
                               description=(
        "Write what the record keeps as TensorBoard event files in DIR (which must hold none yet): each epoch's loss, "
        "validation loss, accuracy and learning rate, and the final activation histograms and dead and saturated "
        "fractions of a run that ended. Training windows are not stored: train --tensorboard writes them as it trains."))
    board.add_argument("id", metavar="ID")
    board.add_argument("directory", type=Path, metavar="DIR")
    for parser in (listing, show, remove, board):
        add_store_option(parser)
        add_server_options(parser)
    models.set_defaults(run=run_models)


# -- checks -------------------------------------------------------------------------------------


def _local_only(args: argparse.Namespace, *flags: str) -> None:
    """Refuse flags that mean nothing with ``--server``."""
    given = [flag for flag in flags if getattr(args, flag.lstrip("-").replace("-", "_")) is not None]
    if args.server and given:
        raise CommandError(f"{' and '.join(given)}: not with --server (the server keeps its own store)")


# -- train --------------------------------------------------------------------------------------


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise CommandError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CommandError(f"{path}: invalid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    if not isinstance(data, dict):
        raise CommandError(f"{path}: a training config is a JSON object, got {type(data).__name__}")
    return data


def train_settings(args: argparse.Namespace) -> tuple[dict[str, Any], TrainConfig]:
    """The settings asked for (``--config`` overridden by flags) and the config they make; problems as ``path: message``."""
    settings = _read_config(args.config) if args.config is not None else {}
    settings.update({name: getattr(args, name) for name, *_ in CONFIG_FLAGS if getattr(args, name) is not None})
    if args.nproc is not None or args.nnodes is not None:
        settings["world_size"] = (args.nproc or 1) * (args.nnodes or 1)
    if (args.plot is not None or args.tensorboard is not None) and "stats_every" not in settings:
        settings["stats_every"] = WATCH_STATS_EVERY
    try:
        return settings, parse_config(settings)
    except ConfigError as error:
        raise CommandError(*map(str, error.problems)) from None


def launch_options(args: argparse.Namespace) -> Launch:
    """Where the ranks of a distributed run meet, from the flags; problems named by flag."""
    from specbuilder.training.distributed import Launch, LaunchError

    for flag in ("--nproc", "--nnodes"):
        value = getattr(args, flag.lstrip("-"))
        if value is not None and value < 1:
            raise CommandError(f"{flag}: must be >= 1, got {value}")
    options = {"nnodes": args.nnodes or 1, "node_rank": args.node_rank, "rdzv_endpoint": args.rdzv_endpoint}
    try:
        return Launch(**options, **({"rdzv_id": args.rdzv_id} if args.rdzv_id else {}))
    except LaunchError as error:
        raise CommandError(f"--{error.field.replace('_', '-')}: {error.message}") from None


def _dataset(name: str, seed: int) -> Dataset:
    try:
        return as_dataset(name, seed=seed)
    except DataError as error:
        raise CommandError(f"data: {error}") from None


@dataclass
class Outcome:
    """How a run went, whether it ran here or on a server."""

    status: str
    reason: str
    history: list[dict[str, Any]]
    stats: Sequence[Any]
    """Final per-layer statistics (``LayerStats``, from a local run or a server)."""
    windows: list[tuple[int, Sequence[Any]]] = field(default_factory=list)
    """(step, layer statistics) of every statistics window, in order."""
    final: str = ""
    """One line on the final model's loss and accuracy, where known."""
    model_id: str | None = None
    note: str = ""
    """A line printed last (a node of a multi-node run that leaves saving to rank 0's node)."""


def _bar(epochs: int, quiet: bool) -> tqdm:
    """An epoch progress bar on stderr; silent with --quiet or when stderr is no terminal."""
    return tqdm(total=epochs, unit="epoch", desc="training", leave=False, file=sys.stderr, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())


def _advance(bar: tqdm, loss: float, val_loss: float | None, accuracy: float | None) -> None:
    shown = {"loss": number(loss), "val_loss": number(val_loss)}
    if accuracy is not None:
        shown["accuracy"] = f"{100 * accuracy:.1f}%"
    bar.set_postfix(shown, refresh=False)
    bar.update(1)


@contextmanager
def _tensorboard(directory: Path | None) -> Iterator[EventWriter | None]:
    """The event writer of ``--tensorboard DIR``, its directory checked now, closed afterwards; None without
    the flag. Its errors, in the block too, become ``CommandError``."""
    if directory is None:
        yield None
        return
    from specbuilder.tensorboard import EventWriter, TensorBoardError

    try:
        with EventWriter(directory) as board:
            yield board
    except TensorBoardError as error:
        raise CommandError(str(error)) from None


def _train_local(args: argparse.Namespace, spec: ModelSpec, config: TrainConfig, dataset: Dataset, launch: Launch,
                 board: EventWriter | None) -> Outcome:
    from specbuilder.store.records import check_name
    from specbuilder.training import EpochEvent, FinishedEvent, StatsEvent, launcher_for, train_events
    from specbuilder.training.distributed import DistributedError

    with ExitStack() as scope:
        store = None
        if args.store is not None:  # opened, and the name checked, before a long run rather than after
            store = scope.enter_context(open_store(args.store, create=True, weights=args.weights))
            with store_errors("--name"):
                check_name(args.name or spec.name)
        events = train_events(spec, dataset, config, launcher=launcher_for(config, launch))
        windows: list[tuple[int, Sequence[Any]]] = []
        try:
            try:
                started = next(events)
            except SpecError as error:
                raise CommandError(*map(str, error.problems)) from None
            except DataError as error:
                raise CommandError(f"data: {error}") from None
            ranks = f", {config.world_size} processes" if config.world_size > 1 else ""
            print(f"training {started.model} ({started.parameters:,} parameters) on {started.dataset}: {started.train_samples} "
                  f"training / {started.val_samples} validation samples, {started.steps_per_epoch} steps per epoch, "
                  f"loss {started.loss}, device {started.device}{ranks}", flush=True)
            with _bar(config.epochs, args.quiet) as bar:
                for event in events:
                    if isinstance(event, EpochEvent):
                        _advance(bar, event.metrics.loss, event.metrics.val_loss, event.metrics.accuracy)
                        if board is not None:
                            board.epoch(event.metrics)
                    elif isinstance(event, StatsEvent):
                        windows.append((event.step, event.layers))
                        if board is not None:
                            board.window(event.step, event.layers)
                    elif isinstance(event, FinishedEvent):
                        result = event.result
        except DistributedError as error:
            raise CommandError(f"distributed training failed: {error}") from None
        final = result.final
        outcome = Outcome(
            status=result.status, reason=result.reason, history=as_dicts(result.history), stats=result.stats, windows=windows,
            final=f"final model on the {final.split} set ({final.samples} samples): loss {number(final.loss)}"
                  + (f", accuracy {100 * final.accuracy:.1f}%" if final.accuracy is not None else ""),
        )
        if store is not None and result.rank != 0:
            outcome.note = f"not saved here: this node reported as rank {result.rank}; the node holding rank 0 saves the model"
        elif store is not None:
            weights = result.module if result.keeps_weights else None  # the record of a diverged or never-stepped run, no file
            with store_errors(f"saving to {args.store}"):
                record = store.save(weights, spec, name=args.name, config=result.config, history=result.history,
                                    stats=result.stats, dataset=result.dataset, status=result.status, reason=result.reason or None)
            outcome.model_id = record.id
    return outcome


def _train_remote(args: argparse.Namespace, spec: ModelSpec, settings: dict[str, Any], config: TrainConfig, dataset: Dataset,
                  board: EventWriter | None) -> Outcome:
    from specbuilder_client import EpochEvent, StatsEvent, TrainStarted

    data: str | tuple[np.ndarray, np.ndarray] = args.data if args.data in DATASETS else (dataset.x, dataset.y)
    windows: list[tuple[int, Sequence[Any]]] = []
    with connect(args) as client, ExitStack() as scope:
        run = scope.enter_context(client.train(spec, data, name=args.name, **settings))
        bar = scope.enter_context(_bar(config.epochs, args.quiet))
        for event in run:
            if isinstance(event, TrainStarted):
                print(f"training {spec.name} ({spec.num_params:,} parameters) on {args.server} as run {event.run_id}: "
                      f"{event.train_samples} training / {event.val_samples} validation samples, "
                      f"{event.steps_per_epoch} steps per epoch", flush=True)
            elif isinstance(event, EpochEvent):
                _advance(bar, event.loss, event.val_loss, event.accuracy)
                if board is not None:
                    board.epoch(event)
            elif isinstance(event, StatsEvent):
                windows.append((event.step, event.stats))
                if board is not None:
                    board.window(event.step, event.stats)
        result = run.result()
    return Outcome(status=result.status, reason=result.reason, history=as_dicts(result.history), stats=result.stats,
                   windows=windows, model_id=result.model_id)


def run_train(args: argparse.Namespace) -> int:
    """Check everything, train (here or on the server), print the tables, save and plot."""
    _local_only(args, "--store")
    ranks = [flag for flag in DISTRIBUTED_FLAGS if getattr(args, flag.lstrip("-").replace("-", "_")) is not None]
    if args.server and ranks:
        raise CommandError(f"{' and '.join(ranks)}: not with --server (the service trains each run in one process; "
                           "distributed training runs here, without --server)")
    spec = load_spec(args.spec, args.max_params)
    settings, config = train_settings(args)
    launch = None if args.server else launch_options(args)
    if args.plot is not None:
        check_out(args.plot)
    with _tensorboard(args.tensorboard) as board:
        dataset = _dataset(args.data, config.seed)
        if launch is None:
            outcome = _train_remote(args, spec, settings, config, dataset, board)
        else:
            outcome = _train_local(args, spec, config, dataset, launch, board)
        if board is not None:
            board.final(len(outcome.history), outcome.stats)
    if outcome.history:
        print()
        print(history_table(outcome.history))
    if outcome.stats:
        grads = {layer.name: layer.grad_norm for layer in outcome.windows[-1][1]} if outcome.windows else None
        print()
        print("final activation statistics" + (" (grad norm: last training window)" if grads else "") + ":")
        print(stats_table(outcome.stats, grads))
    print()
    print(f"{outcome.status}: {outcome.reason}" if outcome.reason else outcome.status)
    if outcome.final:
        print(outcome.final)
    if outcome.model_id:
        print(f"model id: {outcome.model_id}" + (f" (saved in {args.store})" if args.store else f" (stored on {args.server})"))
    if outcome.note:
        print(outcome.note)
    if args.plot is not None:
        from specbuilder import plots

        write_figure(plots.training(outcome.stats, outcome.windows), args.plot)
    if args.tensorboard is not None:
        print(f"wrote TensorBoard events to {args.tensorboard}")
    if outcome.status == "diverged":
        raise CommandError(f"training diverged: {outcome.reason}")
    return 0


# -- eval ---------------------------------------------------------------------------------------


def read_batch(path: Path) -> np.ndarray:
    """The numeric array in an ``.npy`` file (never unpickled); integers and booleans become float32."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except OSError as error:
        raise CommandError(f"{path}: cannot read: {error.strerror or error}") from None
    except ValueError as error:
        raise CommandError(f"{path}: not a numeric .npy array: {error}") from None
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise CommandError(f"{path}: an .npz archive; --input takes one .npy array (np.save)")
    if loaded.dtype.kind not in "biuf":
        raise CommandError(f"{path}: must hold numbers, got dtype {loaded.dtype}")
    return loaded if loaded.dtype.kind == "f" else loaded.astype(np.float32)


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def check_batch(shape: tuple[int, ...], spec: ModelSpec, path: Path) -> None:
    """``shape`` must be ``[N, *input_shape]`` with N >= 1; the message says how to get there."""
    problem = spec.batch_problem(shape)
    if problem:
        raise CommandError(f"{path}: {problem}")


def forward(module: nn.Module, x: np.ndarray, stats: bool, amp: str | None = None) -> tuple[np.ndarray, list[Any]]:
    """``specbuilder.evaluation.evaluate`` over ``x``, moved to the module's device and dtype:
    the outputs as numpy (bfloat16, which numpy lacks, as float32), and statistics when asked."""
    import torch

    from specbuilder.devices import to_device
    from specbuilder.evaluation import evaluate

    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    batch = to_device(torch.from_numpy(np.ascontiguousarray(x)), device, dtype)
    evaluation = evaluate(module, batch, statistics=stats, amp=amp)
    outputs = evaluation.outputs
    if outputs.dtype == torch.bfloat16:
        outputs = outputs.float()
    return outputs.cpu().numpy(), evaluation.stats


def _load_for_eval(args: argparse.Namespace, x: np.ndarray) -> nn.Module:
    from specbuilder.compiler import compile_spec
    from specbuilder.devices import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise CommandError(f"--device: {error}") from None
    if args.spec is not None:
        spec = load_spec(args.spec, args.max_params)
        check_batch(x.shape, spec, args.input)
        return compile_spec(spec, args.style, device, seed=args.seed or 0)
    with open_store(store_path(args), weights=args.weights) as store, store_errors("--model"):
        module = store.load(args.model, device, args.style)
    check_batch(x.shape, module.spec, args.input)
    return module


def _print_outputs(what: str, x: np.ndarray, outputs: np.ndarray) -> None:
    print(f"{what}: input {_shape(x.shape)} -> output {_shape(outputs.shape)} {outputs.dtype}")
    finite = outputs[np.isfinite(outputs)]
    summary = (f"mean {number(float(finite.mean()))}, std {number(float(finite.std()))}, "
               f"min {number(float(finite.min()))}, max {number(float(finite.max()))}") if finite.size else "no finite values"
    missing = outputs.size - finite.size
    print(f"output: {summary}" + (f"; {missing} NaN or infinite" if missing else ""))
    if outputs.ndim == 2 and outputs.shape[1] > 1 and finite.size == outputs.size:
        counts = np.bincount(outputs.argmax(axis=1), minlength=outputs.shape[1])
        print("predicted class (argmax): " + ", ".join(f"{c}: {n} ({100 * n / len(outputs):.1f}%)" for c, n in enumerate(counts) if n))


def run_eval(args: argparse.Namespace) -> int:
    """Run the batch here or on the server; print the summary (and statistics), save the outputs."""
    _local_only(args, "--store")
    if args.seed is not None and args.spec is None:
        raise CommandError("--seed: only with a SPEC (a stored model has its trained weights)")
    if args.seed is not None and args.seed < 0:
        raise CommandError(f"--seed: must be >= 0, got {args.seed}")
    x = read_batch(args.input)
    if args.server:
        model: ModelSpec | str = args.model
        if args.spec is not None:
            model = load_spec(args.spec, args.max_params)
            check_batch(x.shape, model, args.input)
        with connect(args) as client:
            result = client.evaluate(model, x, statistics=args.stats, amp=args.amp, seed=args.seed or 0)
        outputs, stats = np.asarray(result.outputs), result.stats
        what = f"{args.spec or args.model} on {args.server}"
    else:
        module = _load_for_eval(args, x)
        outputs, stats = forward(module, x, args.stats, args.amp)
        what = f"{args.spec or args.model} ({module.spec.name})"
    _print_outputs(what, x, outputs)
    if args.output is not None:
        try:
            np.save(args.output, outputs)
        except OSError as error:
            raise CommandError(f"{args.output}: cannot write: {error.strerror or error}") from None
        print(f"wrote outputs to {args.output}")
    if args.stats:
        print()
        print(stats_table(stats) if stats else "no layers were monitored (the model has no activation layers)")
    return 0


# -- models -------------------------------------------------------------------------------------


def run_models_list(args: argparse.Namespace) -> int:
    """A table of the stored models (accuracy: the last epoch's, where the listing carries history)."""
    if args.server:
        with connect(args) as client:
            try:
                records = client.list_models(args.status)
            except ValueError as error:
                raise CommandError(f"--status: {error}") from None
        where = args.server
    else:
        where = str(store_path(args))
        with open_store(where, weights=args.weights) as store, store_errors("--status"):
            records = store.list(args.status)
    if not records:
        print(f"no models in {where}" + (f" with status {args.status}" if args.status else ""))
        return 0
    rows = [("id", "name", "status", "params", "created", "accuracy")]
    rows += [(r.id, r.name, r.status, f"{r.num_params:,}", when(r.created), last_accuracy(getattr(r, "history", ())))  # a summary has none
             for r in records]
    print(table(rows))
    return 0


@contextmanager
def _model_by_id(args: argparse.Namespace, command: str) -> Iterator[tuple[Callable[[str], Any], Callable[[str], object]]]:
    """``get`` and ``delete`` of a model by id: on ``--server``, else in the local store, its
    failures as ``command: message``; either way a failure is a ``CommandError``."""
    if args.server:
        with connect(args) as client:
            yield client.get_model, client.delete_model
    else:
        with open_store(store_path(args), weights=args.weights) as store, store_errors(command):
            yield store.get, store.delete


def run_models_show(args: argparse.Namespace) -> int:
    """One record in full."""
    with _model_by_id(args, "models show") as (get, _):
        record = get(args.id)
    print(record_text(record))
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def run_models_tensorboard(args: argparse.Namespace) -> int:
    """What a record keeps as TensorBoard event files: its epochs and, of a run that ended, its final statistics."""
    from specbuilder.tensorboard import TensorBoardError, write_record

    with _model_by_id(args, "models tensorboard") as (get, _):
        record = get(args.id)
    try:
        written = write_record(args.directory, record)
    except TensorBoardError as error:
        raise CommandError(str(error)) from None
    except ValueError as error:  # a stored histogram whose edges and counts disagree
        raise CommandError(f"model {record.id}: {error}") from None
    if not written.epochs and not written.final_layers:
        print(f"model {record.id} ({record.name}) has no epochs or final statistics: nothing written")
    else:
        final = f" and the final statistics of {_count(written.final_layers, 'layer')} (final/*)" if written.final_layers else ""
        print(f"wrote {_count(written.epochs, 'epoch')} (epoch/*){final} of model {record.id} ({record.name}) to {args.directory}")
    if written.left_out:
        print(f"final statistics not written: {written.left_out}")
    print("training windows (train/*) are not stored; specbuilder train --tensorboard DIR writes them as it trains")
    return 0


def run_models_rm(args: argparse.Namespace) -> int:
    """Delete one model."""
    with _model_by_id(args, "models rm") as (get, delete):
        record = get(args.id)
        delete(args.id)
    print(f"deleted model {record.id} ({record.name})")
    return 0


MODEL_ACTIONS = {"list": run_models_list, "show": run_models_show, "rm": run_models_rm, "tensorboard": run_models_tensorboard}


def run_models(args: argparse.Namespace) -> int:
    """``models ACTION``: the action's runner."""
    return MODEL_ACTIONS[args.action](args)
