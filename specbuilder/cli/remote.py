"""``--server HOST:PORT`` and ``--token``: commands that run on a specbuilder server instead of in-process.

``--server`` takes what ``Client`` takes as one string: an address, a gRPC target
(``dns:///name:port``), or replicas' ``IP:PORT`` addresses separated by commas, which gRPC
balances round-robin.

``connect(args)`` opens a ``specbuilder_client.Client`` and turns every failed call into a
``CommandError`` (one line per problem, the server's paths kept), so a remote command fails
like a local one: a message and exit 1, never a gRPC traceback. The client package (and grpc)
load only when a command goes remote.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from specbuilder.cli.common import CommandError
from specbuilder.cli.serve_commands import TOKEN_ENV
from specbuilder.spec import ModelSpec

if TYPE_CHECKING:
    from specbuilder_client import Client, SpecbuilderError

def add_server_options(parser: argparse.ArgumentParser) -> None:
    """The ``--server`` and ``--token`` options of a command that can run remotely."""
    parser.add_argument("--server", metavar="HOST:PORT[,HOST:PORT...]", help=(
        "run on this specbuilder server instead of in-process; several replicas' IP:PORT addresses, "
        "comma-separated, are balanced round-robin"))
    parser.add_argument("--token", default=None, help=f"bearer token for --server (default ${TOKEN_ENV}; prefer the variable: arguments show in ps)")


def error_lines(server: str, error: SpecbuilderError) -> list[str]:
    """What a failed call says to people: each violation at its path, or the server's message with a hint."""
    from specbuilder_client import Unauthenticated, Unavailable

    if error.violations:
        return [str(violation) for violation in error.violations]
    line = f"server {server}: {error.message}"
    if isinstance(error, Unavailable):
        return [line, f"is `specbuilder serve` running at {server}?"]
    if isinstance(error, Unauthenticated):
        return [line, f"pass --token or set {TOKEN_ENV}"]
    return [line]


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[Client]:
    """A client for ``args.server`` with ``args.token`` (else ``$SPECBUILDER_TOKEN``); failures become ``CommandError``."""
    from specbuilder_client import Client, SpecbuilderError

    try:
        client = Client(args.server, token=args.token or os.environ.get(TOKEN_ENV) or None)
    except ValueError as error:
        raise CommandError(f"--server: {error}") from None
    try:
        with client:
            yield client
    except SpecbuilderError as error:
        raise CommandError(*error_lines(args.server, error)) from None


def run_compile(args: argparse.Namespace, spec: ModelSpec) -> int:
    """``specbuilder compile --server``: the server's layer table (or code) for ``spec``."""
    with connect(args) as client:
        compiled = client.compile(spec, args.style, code=args.code)
    if args.code:
        print(compiled.code, end="")
        return 0
    print(f"{args.spec}: {spec.name}, style {args.style}, compiled on {args.server}")
    print(compiled.summary)
    return 0


__all__ = ["add_server_options", "connect", "error_lines", "run_compile"]
