"""The client's end of the server's local socket (``specbuilder_wire.localsocket``).

A shared-memory client finds the socket's path in the trailing metadata of its first
shared-memory Evaluate call over gRPC (or the headers of a stream), connects, and sends the
following ones there: the same request bytes, the same answers, failures raised as the same
typed errors. A connection that breaks is dropped, and the call it was making goes to gRPC
instead (Evaluate changes nothing on the server, so sending it again is safe); the next gRPC
answer names the socket again. A call whose timeout passes raises ``DeadlineExceeded``, and the
client drops the connection, since its answer would still be on the way. Streams have
connections of their own (``local_stream``), made with the same hello.
"""

from __future__ import annotations

import socket
import time

import grpc
from google.rpc import status_pb2

from specbuilder_client.errors import DeadlineExceeded, from_status
from specbuilder_wire.localsocket import EVALUATE, HELLO, STATUS, hello, read_head, read_payload, send_frame
from specbuilder_wire.v1 import service_pb2

CONNECT_SECONDS = 2.0
"""How long connecting and the hello may take before the client keeps to gRPC."""


class LocalConnection:
    """One connection to the local socket at ``path``, through its hello; one call at a time (a stream's
    sending thread and its reader may share it: ``send`` and ``reply`` use the two directions)."""

    def __init__(self, path: str, token: str | None) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.settimeout(CONNECT_SECONDS)
            self._socket.connect(path)
            send_frame(self._socket, HELLO, hello(token))
            self.reply(time.monotonic() + CONNECT_SECONDS)
        except BaseException:
            self._socket.close()
            raise

    def evaluate(self, request: service_pb2.EvaluateRequest, timeout: float | None) -> service_pb2.EvaluateResponse:
        """One Evaluate call; a ``SpecbuilderError`` for the status it failed with, ``OSError`` if the connection broke."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._socket.settimeout(timeout)
        try:
            self.send(EVALUATE, request.SerializeToString())
            return service_pb2.EvaluateResponse.FromString(self.reply(deadline))
        except TimeoutError:
            raise DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer on the local socket within {timeout:g} s") from None

    def send(self, kind: int, payload: bytes) -> None:
        """Write one frame; ``OSError`` if the connection broke."""
        send_frame(self._socket, kind, payload)

    def reply(self, deadline: float | None) -> bytes:
        """The payload of the server's next ``OK`` frame, waiting until ``deadline`` (``time.monotonic()``; None: no limit);
        the ``SpecbuilderError`` of a ``STATUS`` frame, ``TimeoutError`` past the deadline, ``OSError`` if the connection broke."""
        self._socket.settimeout(None if deadline is None else max(deadline - time.monotonic(), 1e-3))
        kind, length = read_head(self._socket)
        if deadline is not None:
            self._socket.settimeout(max(deadline - time.monotonic(), 1e-3))
        payload = read_payload(self._socket, length)
        if kind == STATUS:
            raise from_status(status_pb2.Status.FromString(payload))
        return payload

    def shutdown(self) -> None:
        """End the connection both ways now, from any thread: a read or write waiting on it fails at once."""
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:  # closed already
            pass

    def close(self) -> None:
        self._socket.close()


__all__ = ["CONNECT_SECONDS", "LocalConnection"]
