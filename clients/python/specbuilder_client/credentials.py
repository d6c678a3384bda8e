"""Who the client says it is: its bearer token, and its TLS settings (server roots, client certificate).

``bearer_token`` takes a token or a token file (``specbuilder_wire.token_files``: the same format and
permission checks as the server's ``--token-file``, and exactly one token, since a client sends
one). ``channel_credentials`` turns PEM bytes or paths into gRPC's TLS credentials: TLS is on when
any of them is given; a client certificate and its key go together (mutual TLS, for a server
started with ``--tls-client-ca``).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import grpc

from specbuilder_wire.token_files import TokenFileError, read_token_file

Pem = bytes | str | PathLike[str]
"""PEM bytes, or the path of a PEM file."""


def bearer_token(token: str | None, token_file: str | PathLike[str] | None) -> str | None:
    """The token to send: ``token``, or the one token in ``token_file``; at most one of them may be given."""
    if token is not None and token_file is not None:
        raise ValueError("give a token or a token file, not both")
    if token is not None and not token.strip():
        raise ValueError("the token is empty: give the token, or None to send none")
    if token_file is None:
        return token
    found = read_token_file(token_file)
    if len(found) > 1:
        raise TokenFileError(f"token file {token_file} holds {len(found)} tokens; a client sends one: keep one line")
    return found[0]


def _read_pem(source: Pem) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def channel_credentials(root_certificates: Pem | None, certificate_chain: Pem | None,
                        private_key: Pem | None) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM bytes or paths, None for plaintext (none given); ``OSError`` if a file cannot be read.

    ``root_certificates`` are the CAs trusted to sign the server's certificate (the system's own
    when None); ``certificate_chain`` and ``private_key`` are the client's certificate and key.
    """
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("a client certificate and its private key go together: give both or neither")
    if root_certificates is None and certificate_chain is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=None if root_certificates is None else _read_pem(root_certificates),
        private_key=None if private_key is None else _read_pem(private_key),
        certificate_chain=None if certificate_chain is None else _read_pem(certificate_chain),
    )


__all__ = ["Pem", "bearer_token", "channel_credentials"]
