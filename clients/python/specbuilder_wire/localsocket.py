"""The local socket's frames: shared-memory Evaluate and StreamEvaluate calls over a Unix socket, for clients on the server's host.

Shared-memory calls carry no tensor bytes, so they skip gRPC's own fixed cost of a call too: a
server started with ``--shared-memory`` also listens on a Unix socket in a private directory
(mode 0700) and names it (``METADATA_KEY``) in the trailing metadata of shared-memory Evaluate
calls and in the initial metadata of every StreamEvaluate call; the client then sends its
shared-memory Evaluate calls and streams there: the same request bytes, the same servicer, the
same answers and statuses. Everything else (training, the store) stays on gRPC, and a client that
cannot reach the socket keeps using gRPC.

Both directions are frames: one kind byte, a 4-byte little-endian length, the payload. A
connection starts with ``HELLO`` (``PROTOCOL``, a NUL, the server's token if it has one) and is
answered ``OK`` (empty) or ``STATUS``; after that, calls one at a time:

- ``EVALUATE`` (an ``EvaluateRequest``) is answered ``OK`` (an ``EvaluateResponse``) or ``STATUS``
  (a ``google.rpc.Status``, with the same code, message and ``BadRequest`` details a gRPC call
  would get); the connection stays open either way.
- A stream is ``STREAM`` frames, each a ``StreamEvaluateRequest`` (the first one, the start, opens
  it; the rest are batches, which the client may send without waiting for answers), then
  ``CLOSE`` (empty: no more batches). The server answers ``OK`` frames, each a
  ``StreamEvaluateResponse``: one per batch in order, then the summary, which ends the stream.
  A ``STATUS`` instead ends the stream and the connection: the server closes it, so batches the
  client sent meanwhile are never read.

Frames are read whole before they are parsed; one over the server's message limit is answered
``STATUS`` and the connection closed.
"""

from __future__ import annotations

import socket
import struct

PROTOCOL = b"specbuilder-local/1"
METADATA_KEY = "specbuilder-local-socket"
"""The trailing-metadata key under which the server names its socket's path."""

HELLO, EVALUATE, STREAM, CLOSE = 1, 2, 3, 4
"""Kinds of the client's frames."""
OK, STATUS = 0, 1
"""Kinds of the server's frames."""

HEAD = struct.Struct("<BI")
"""A frame's head: its kind, then its payload's length."""


class ClosedError(ConnectionError):
    """The other side closed the connection (between frames, or in the middle of one)."""


def frame(kind: int, payload: bytes) -> bytes:
    """One frame's bytes."""
    return HEAD.pack(kind, len(payload)) + payload


def send_frame(sock: socket.socket, kind: int, payload: bytes) -> None:
    """Write one frame."""
    sock.sendall(frame(kind, payload))


def read_head(sock: socket.socket) -> tuple[int, int]:
    """The next frame's kind and length; ``ClosedError`` if the connection ends first."""
    kind, length = HEAD.unpack(_read(sock, HEAD.size))
    return kind, length


def read_payload(sock: socket.socket, length: int) -> bytes:
    """A frame's ``length`` payload bytes, read into one buffer."""
    return _read(sock, length)


def _read(sock: socket.socket, length: int) -> bytes:
    buffer = bytearray(length)
    view = memoryview(buffer)
    got = 0
    while got < length:
        count = sock.recv_into(view[got:])
        if count == 0:
            raise ClosedError("the connection closed" + (f" {got} bytes into a {length}-byte read" if got else ""))
        got += count
    return bytes(buffer)


def hello(token: str | None) -> bytes:
    """The payload of a client's ``HELLO``."""
    return PROTOCOL + b"\0" + (token or "").encode()


__all__ = ["CLOSE", "EVALUATE", "HEAD", "HELLO", "STREAM", "METADATA_KEY", "OK", "PROTOCOL", "STATUS", "ClosedError", "frame", "hello", "read_head", "read_payload", "send_frame"]
