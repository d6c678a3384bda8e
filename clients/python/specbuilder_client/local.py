"""The client's end of the server's local socket (``specbuilder_wire.localsocket``).

A shared-memory client finds the socket's path in the trailing metadata of its first
shared-memory Evaluate call over gRPC, connects, and sends the following ones there: the same
request bytes, the same answers, failures raised as the same typed errors. A connection that
breaks is dropped, and the call it was making goes to gRPC instead (Evaluate changes nothing on
the server, so sending it again is safe); the next gRPC answer names the socket again. A call
whose timeout passes raises ``DeadlineExceeded``, and the client drops the connection, since
its answer would still be on the way.
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
    """One connection to the local socket at ``path``, through its hello; not safe for concurrent calls."""

    def __init__(self, path: str, token: str | None) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.settimeout(CONNECT_SECONDS)
            self._socket.connect(path)
            send_frame(self._socket, HELLO, hello(token))
            self._reply(time.monotonic() + CONNECT_SECONDS)
        except BaseException:
            self._socket.close()
            raise

    def evaluate(self, request: service_pb2.EvaluateRequest, timeout: float | None) -> service_pb2.EvaluateResponse:
        """One Evaluate call; a ``SpecbuilderError`` for the status it failed with, ``OSError`` if the connection broke."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._socket.settimeout(timeout)
        try:
            send_frame(self._socket, EVALUATE, request.SerializeToString())
            return service_pb2.EvaluateResponse.FromString(self._reply(deadline))
        except TimeoutError:
            raise DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer on the local socket within {timeout:g} s") from None

    def _reply(self, deadline: float | None) -> bytes:
        kind, length = read_head(self._socket)
        if deadline is not None:
            self._socket.settimeout(max(deadline - time.monotonic(), 1e-3))
        payload = read_payload(self._socket, length)
        if kind == STATUS:
            raise from_status(status_pb2.Status.FromString(payload))
        return payload

    def close(self) -> None:
        self._socket.close()


__all__ = ["CONNECT_SECONDS", "LocalConnection"]
