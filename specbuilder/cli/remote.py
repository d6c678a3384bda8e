"""``--server HOST:PORT`` and its credentials: commands that run on a specbuilder server instead of in-process.

``--server`` takes what ``Client`` takes as one string: an address, a gRPC target
(``dns:///name:port``), or replicas' ``IP:PORT`` addresses separated by commas, which gRPC
balances round-robin. The caller proves who it is with a token (``--token``, ``--token-file``
or ``$SPECBUILDER_TOKEN``) and, for a server that requires client certificates, ``--tls-cert``
and ``--tls-key``; ``--tls-ca`` names the CAs trusted to sign the server's certificate (TLS is on
when any ``--tls-*`` option is given).

``connect(args)`` opens a ``specbuilder_client.Client`` and turns every failed call into a
``CommandError`` (one line per problem, the server's paths kept), so a remote command fails
like a local one: a message and exit 1, never a gRPC traceback. The client package (and grpc)
load only when a command goes remote.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from specbuilder.cli.common import CommandError
from specbuilder.cli.credentials import TOKEN_ENV, env_token
from specbuilder.spec import ModelSpec
from specbuilder_wire.token_files import TokenFileError

if TYPE_CHECKING:
    from specbuilder_client import Client, SpecbuilderError

def add_server_options(parser: argparse.ArgumentParser) -> None:
    """The ``--server`` option of a command that can run remotely, and its credentials."""
    parser.add_argument("--server", metavar="HOST:PORT[,HOST:PORT...]", help=(
        "run on this specbuilder server instead of in-process; several replicas' IP:PORT addresses, "
        "comma-separated, are balanced round-robin"))
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", default=None, help=(
        f"bearer token for --server (default ${TOKEN_ENV}; arguments show in ps: prefer --token-file or the variable)"))
    token.add_argument("--token-file", type=Path, metavar="FILE", help="a file holding the token for --server on one line (mode 600)")
    parser.add_argument("--tls-ca", type=Path, metavar="PEM", help="speak TLS to --server, trusting these CAs (default: the system's)")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="this client's certificate, for a server that requires one (TLS)")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")


def error_lines(server: str, error: SpecbuilderError) -> list[str]:
    """What a failed call says to people: each violation at its path, or the server's message with a hint."""
    from specbuilder_client import Unauthenticated, Unavailable

    if error.violations:
        return [str(violation) for violation in error.violations]
    line = f"server {server}: {error.message}"
    if isinstance(error, Unavailable):
        return [line, f"is `specbuilder serve` running at {server}?"]
    if isinstance(error, Unauthenticated):
        return [line, f"pass --token-file or --token, or set {TOKEN_ENV}"]
    return [line]


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[Client]:
    """A client for ``args.server`` with its credentials (``--token``, ``--token-file`` or ``$SPECBUILDER_TOKEN``; the
    ``--tls-*`` files); failures become ``CommandError``."""
    from specbuilder_client import Client, SpecbuilderError

    if args.token is not None and not args.token.strip():
        raise CommandError("--token is empty: give the token, or leave the option out")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CommandError("--tls-cert and --tls-key go together: give both or neither")
    token = args.token if args.token is not None or args.token_file is not None else env_token("--server")
    try:
        client = Client(args.server, token=token, token_file=args.token_file, root_certificates=args.tls_ca,
                        certificate_chain=args.tls_cert, private_key=args.tls_key)
    except TokenFileError as error:
        raise CommandError(f"--token-file: {error}") from None
    except OSError as error:
        raise CommandError(f"{error.filename}: cannot read: {error.strerror or error}") from None
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
