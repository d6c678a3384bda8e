"""``specbuilder serve``: run the gRPC service until SIGTERM or Ctrl-C, then stop gracefully.

The server package (``specbuilder_server``) is imported only when the command runs, so the
rest of the command line never loads grpc. With ``--port 0`` a free port is picked; the line
``listening on HOST:PORT`` on stdout says which (scripts and tests read it).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from specbuilder.cli.common import CommandError, add_max_params, count
from specbuilder.cli.credentials import TOKEN_ENV, full_tokens, tokens
from specbuilder.cli.stores import store_location


def _positive(text: str) -> int:
    value = count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1, got 0")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


BUDGETS = (
    ("cache_mb", "MB", "megabytes of weights the kept models may hold in all"),
    ("max_flops_per_call", "N", "refuse an evaluation estimated to cost more FLOPs (2 x multiply-adds x rows)"),
    ("max_compute_seconds", "S", "stop a call's compute after S seconds"),
    ("stream_idle_seconds", "S", "end a stream that sends, or reads, nothing for S seconds"),
    ("max_streams", "N", "open StreamEvaluate and Train calls (and local-socket connections) in all"),
    ("max_streams_per_connection", "N", "open streams on one client connection"),
)
"""``ServerConfig`` fields given as flags of the same name: (field, metavar, what it bounds)."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` to argparse's ``commands``."""
    from specbuilder_server.config import ServerConfig, default_store

    default = {name: field.default for name, field in ServerConfig.model_fields.items()}
    serve = commands.add_parser("serve", help="run the gRPC service (ModelService, health, reflection)", description=(
        "Serve ModelService over gRPC until SIGTERM or Ctrl-C, then stop gracefully: health turns NOT_SERVING, "
        "running trainings are stored as cancelled, calls in flight get --grace seconds to finish."))
    serve.add_argument("--host", default=default["host"], help=f"address to bind (default {default['host']}; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=count, default=default["port"], help=f"port (default {default['port']}; 0 picks a free one and prints it)")
    serve.add_argument("--store", type=store_location, default=None, metavar="DIR|URL", help=(
        f"model store: a directory (default {default_store()}), or postgresql://USER@HOST:PORT/DATABASE[?schema=NAME] "
        "shared by replicas on many hosts (password from $PGPASSWORD or ~/.pgpass)"))
    serve.add_argument("--weights", default=None, metavar="URL|DIR", help=(
        "where a PostgreSQL store keeps weights: s3://BUCKET/PREFIX (endpoint and credentials from the AWS_* variables) "
        "or a directory every replica mounts (required with a postgresql:// store)"))
    serve.add_argument("--store-lease", type=float, default=default["store_lease_seconds"], metavar="SECONDS", help=(
        "a PostgreSQL store's run lease: a run whose replica died reads interrupted on every replica after this long "
        f"(default {default['store_lease_seconds']:g})"))
    serve.add_argument("--store-max-bytes", type=_positive, default=None, metavar="N",
                       help="bytes of weights the store may hold; past it saves and trainings are refused (default: no limit)")
    serve.add_argument("--store-max-models", type=_positive, default=None, metavar="N",
                       help="models and runs the store may hold; past it new ones are refused (default: no limit)")
    serve.add_argument("--token", action="append", help=(
        f"a full-access bearer token: with any token set, every call but health must carry one (repeatable: any is accepted, "
        f"for rotation; default ${TOKEN_ENV}; arguments show in ps: prefer --token-file)"))
    serve.add_argument("--token-file", action="append", type=Path, metavar="FILE", help=(
        "full-access tokens, one per line (# comments and blank lines skipped; repeatable); mode 600, or 640 owned by root"))
    serve.add_argument("--inference-token", action="append", metavar="TOKEN", help=(
        "a bearer token with the inference role: it may validate, compile, evaluate and read models; training, deleting and "
        "exporting answer PERMISSION_DENIED (repeatable)"))
    serve.add_argument("--inference-token-file", action="append", type=Path, metavar="FILE",
                       help="inference tokens, one per line, as --token-file")
    serve.add_argument("--tls-cert", type=Path, metavar="PEM", help="certificate chain; with --tls-key the server speaks TLS")
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    serve.add_argument("--tls-client-ca", type=Path, metavar="PEM", help=(
        "with --tls-cert: require a client certificate signed by one of these CAs (mTLS); with no token set, such a "
        "certificate alone admits a caller, with full access"))
    serve.add_argument("--max-message-mb", type=_positive, default=default["max_message_mb"], metavar="MB",
                       help=f"largest message either way (default {default['max_message_mb']})")
    add_max_params(serve)
    serve.add_argument("--max-batch-elements", type=_positive, default=default["max_batch_elements"], metavar="N",
                       help=f"refuse batches whose largest layer output has more elements (default {default['max_batch_elements']:,})")
    serve.add_argument("--max-concurrent-trains", type=_positive, default=default["max_concurrent_trains"], metavar="N",
                       help=f"training runs at once; more are refused (default {default['max_concurrent_trains']})")
    serve.add_argument("--max-train-seconds", type=_seconds, default=None, metavar="S", help="cancel a training run after S seconds (default: no limit)")
    serve.add_argument("--device", default=default["device"], help="'auto' (default: CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    serve.add_argument("--shared-memory", action="store_true", help=(
        "accept tensors in POSIX shared memory from clients on this host, and answer their Evaluate calls on a Unix "
        "socket too (gRPC's fixed cost is then most of a call)"))
    serve.add_argument("--no-local-socket", dest="local_socket", action="store_false",
                       help="with --shared-memory: no Unix socket (shared-memory calls are then refused, unless --shared-memory-over-grpc)")
    serve.add_argument("--shared-memory-over-grpc", action="store_true", help=(
        "with --shared-memory, on a single-tenant host only: also read shared memory named in gRPC calls, with the server's "
        "rights (gRPC cannot tell the caller's user, so another user's region could be read)"))
    serve.add_argument("--metrics-port", type=count, default=None, metavar="P",
                       help="serve Prometheus metrics at http://HOST:P/metrics (0 picks a free port; default: not served)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a --host other machines can reach without a token: everyone who reaches the port may call every RPC")
    serve.add_argument("--cache-size", type=_positive, default=default["cache_size"], metavar="N",
                       help=f"compiled and loaded models kept ready (default {default['cache_size']})")
    serve.add_argument("--workers", type=_positive, default=default["workers"], metavar="N",
                       help=f"threads for blocking work: parsing, compiling, the store (default {default['workers']}); waiting calls hold none")
    for field, metavar, what in BUDGETS:
        value = default[field]
        shown = f"{value:.0e}" if isinstance(value, int) and value >= 10**6 else f"{value:g}"
        serve.add_argument("--" + field.replace("_", "-"), type=_seconds if isinstance(value, float) else _positive, default=value,
                           metavar=metavar, help=f"{what} (default {shown})")
    serve.add_argument("--no-dynamic-batching", dest="dynamic_batching", action="store_false", help=(
        "compute every Evaluate call alone (default: concurrent calls on the same model, input dtype and amp merge into one forward)"))
    serve.add_argument("--max-batch-rows", type=_positive, default=default["max_batch_rows"], metavar="N",
                       help=f"rows one merged forward takes at most (default {default['max_batch_rows']})")
    serve.add_argument("--batch-delay-us", type=count, default=default["batch_delay_us"], metavar="US", help=(
        f"microseconds a call waits for others to merge with (default {default['batch_delay_us']}: only calls that queued "
        "while the previous forward ran merge, so none waits longer than alone)"))
    serve.add_argument("--grace", type=float, default=default["grace_seconds"], metavar="S",
                       help=f"seconds calls in flight get to finish on stop (default {default['grace_seconds']:g})")
    serve.add_argument("--max-connection-age", type=_seconds, default=None, metavar="S", help=(
        "close client connections after about S seconds (calls in flight finish first) so clients re-resolve the "
        "server's name and reach new replicas (default: never)"))
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Start, print where, wait for SIGTERM/SIGINT, stop gracefully."""
    from specbuilder_server import ServerConfig, ServerStartError, start_server

    settings = {
        "host": args.host, "port": args.port, "insecure": args.insecure,
        "tokens": full_tokens("serve", args.token, args.token_file),
        "inference_tokens": tokens("serve", "--inference-token", args.inference_token, args.inference_token_file),
        "metrics_port": args.metrics_port, "store_max_bytes": args.store_max_bytes, "store_max_models": args.store_max_models,
        "weights": args.weights, "store_lease_seconds": args.store_lease,
        "tls_cert": args.tls_cert, "tls_key": args.tls_key, "tls_client_ca": args.tls_client_ca, "max_message_mb": args.max_message_mb,
        "max_params": args.max_params, "max_batch_elements": args.max_batch_elements,
        "max_concurrent_trains": args.max_concurrent_trains, "max_train_seconds": args.max_train_seconds,
        "device": args.device, "shared_memory": args.shared_memory, "local_socket": args.local_socket,
        "shared_memory_over_grpc": args.shared_memory_over_grpc, "cache_size": args.cache_size,
        **{field: getattr(args, field) for field, _, _ in BUDGETS},
        "dynamic_batching": args.dynamic_batching, "max_batch_rows": args.max_batch_rows, "batch_delay_us": args.batch_delay_us,
        "workers": args.workers, "grace_seconds": args.grace, "max_connection_age_seconds": args.max_connection_age,
    }
    if args.store is not None:
        settings["store"] = args.store
    try:
        config = ServerConfig(**settings)
    except ValidationError as error:
        raise CommandError(*(f"serve: {'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in error.errors())) from None
    try:
        server = start_server(config)
    except ServerStartError as error:
        raise CommandError(f"serve: {error}") from None
    stop = threading.Event()

    def on_signal(number: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"listening on {config.host}:{server.port} ({config.protection}; {server.store})", flush=True)
        if server.metrics_port is not None:
            print(f"metrics on http://{config.host}:{server.metrics_port}/metrics", flush=True)
        while not stop.wait(1.0):  # a timeout, so the main thread runs signal handlers promptly
            pass
        print(f"stopping: calls in flight get {config.grace_seconds:g} s to finish", file=sys.stderr, flush=True)
    finally:
        server.stop()  # a second signal meanwhile only sets the event again
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped", file=sys.stderr, flush=True)
    return 0
