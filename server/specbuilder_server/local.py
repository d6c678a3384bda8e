"""The server's end of the local socket (``specbuilder.localsocket``): Evaluate for same-host clients.

A Unix socket in a directory of its own (mode 0700, removed on stop) that only this user (or
root) can reach, checked again per connection with ``SO_PEERCRED``. A connection is served by a
thread of its own, at most ``max_connections`` at once; each frame is parsed like a gRPC request
(``decoding``: the batch's elements, if inline, are not copied), checked against the same token
and message limit, and handed to the same ``ModelServicer.Evaluate``; its failures come back as
the ``google.rpc.Status`` a gRPC call would have ended with. While a call runs it counts as a
call in flight for the pool (``TrimmingPool.working``), so memory is not trimmed under it.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from specbuilder.localsocket import EVALUATE, HELLO, OK, PROTOCOL, STATUS, ClosedError, read_head, read_payload, send_frame
from specbuilder.v1 import service_pb2
from specbuilder_server.decoding import SERVICE, Received, malformed, parser_for

log = logging.getLogger("specbuilder_server")

HELLO_BYTES = 4096
"""Largest hello accepted: the protocol name and a token."""
HELLO_SECONDS = 10.0
"""How long a new connection may take to say hello before it is closed: a silent one holds a slot."""
_METHOD = SERVICE.methods_by_name["Evaluate"]
_parse = parser_for(service_pb2.EvaluateRequest.FromString, _METHOD)
"""Bytes to ``Received``, as the gRPC path parses them (``decoding``)."""
_CREDENTIALS = struct.Struct("3i")
_DETAILS_KEY = "grpc-status-details-bin"

EvaluateMethod = Callable[[Received[service_pb2.EvaluateRequest], Any], service_pb2.EvaluateResponse]


class _Ended(Exception):
    """A call ended with a status (the servicer aborted it)."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


class _Context:
    """What ``ModelServicer.Evaluate`` needs of a ``grpc.ServicerContext`` on the local socket."""

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        details = dict(status.trailing_metadata or ()).get(_DETAILS_KEY)
        raise _Ended(status_pb2.Status.FromString(details) if details else _status_message(status.code, status.details))

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Ended(_status_message(code, details))

    def set_trailing_metadata(self, metadata: Any) -> None:
        """Nothing travels beside the answer here."""

    def is_active(self) -> bool:
        return True


def _status_message(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code.value[0], message=message)


def _status(code: grpc.StatusCode, message: str) -> bytes:
    """A ``STATUS`` frame's payload."""
    return _status_message(code, message).SerializeToString()


class LocalSocket:
    """Listens on a fresh Unix socket (``path``) and answers Evaluate frames until ``close``."""

    def __init__(self, evaluate: EvaluateMethod, *, token: str | None, max_message_bytes: int, max_connections: int,
                 working: Callable[[], AbstractContextManager[None]]) -> None:
        self._evaluate = evaluate
        self._token = (token or "").encode()
        self._max_message_bytes = max_message_bytes
        self._max_connections = max_connections
        self._working = working
        self._folder = tempfile.mkdtemp(prefix="specbuilder-")
        self.path = os.path.join(self._folder, "evaluate.sock")
        """Where clients connect: named to them in the trailing metadata of shared-memory Evaluate calls."""
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(max_connections)
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="specbuilder-local", daemon=True)
        self._acceptor.start()

    def close(self, grace: float) -> None:
        """Stop accepting, let calls in flight finish (up to ``grace`` seconds), remove the socket."""
        deadline = time.monotonic() + grace
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections = dict(self._connections)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
        self._listener.close()
        self._acceptor.join(grace)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)  # an idle one wakes to EOF; one in a call still answers it
        for thread in connections.values():
            thread.join(max(deadline - time.monotonic(), 0))
        shutil.rmtree(self._folder, ignore_errors=True)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                refused = self._closed or len(self._connections) >= self._max_connections
                if not refused:
                    thread = threading.Thread(target=self._serve, args=(connection,), name="specbuilder-local-call", daemon=True)
                    self._connections[connection] = thread
            if refused:
                with contextlib.suppress(OSError):
                    send_frame(connection, STATUS, _status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                           f"the local socket serves {self._max_connections} connections at once; use gRPC"))
                connection.close()
                continue
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            if self._welcome(connection):
                while self._answer(connection):
                    pass
        except (ClosedError, OSError):
            pass  # the client went away: nobody to answer
        finally:
            with self._lock:
                self._connections.pop(connection, None)
            connection.close()

    def _welcome(self, connection: socket.socket) -> bool:
        """Check the peer and its hello; answer OK or why not. True if the connection may go on."""
        _, uid, _ = _CREDENTIALS.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
        connection.settimeout(HELLO_SECONDS)
        kind, length = read_head(connection)
        if uid not in (os.getuid(), 0):
            problem = _status(grpc.StatusCode.PERMISSION_DENIED, "the local socket serves its own user only")
        elif kind != HELLO or length > HELLO_BYTES:
            problem = _status(grpc.StatusCode.INVALID_ARGUMENT, f"a connection must start with a hello frame of at most {HELLO_BYTES} bytes")
        else:
            protocol, _, token = read_payload(connection, length).partition(b"\0")
            if protocol != PROTOCOL:
                problem = _status(grpc.StatusCode.FAILED_PRECONDITION, f"this server speaks {PROTOCOL.decode()}, the client {protocol[:64]!r}")
            elif self._token and not hmac.compare_digest(token, self._token):
                problem = _status(grpc.StatusCode.UNAUTHENTICATED, "the token sent in the hello is not this server's token"
                                  if token else "this server needs a token: send it in the hello")
            else:
                connection.settimeout(None)  # a connection may then wait as long as it likes between calls
                send_frame(connection, OK, b"")
                return True
        send_frame(connection, STATUS, problem)
        return False

    def _answer(self, connection: socket.socket) -> bool:
        """Read one Evaluate frame and answer it. True if the connection may go on."""
        kind, length = read_head(connection)
        if kind != EVALUATE:
            send_frame(connection, STATUS, _status(grpc.StatusCode.INVALID_ARGUMENT, f"unknown frame kind {kind}: after the hello only Evaluate frames ({EVALUATE}) come"))
            return False
        if length > self._max_message_bytes:
            send_frame(connection, STATUS, _status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request is {length} bytes, over this server's limit of {self._max_message_bytes} (max_message_mb)"))
            return False
        raw = read_payload(connection, length)
        with self._working():
            try:
                reply = OK, self._evaluate(_parse(raw), _Context()).SerializeToString()
            except DecodeError:
                reply = STATUS, _status(grpc.StatusCode.INVALID_ARGUMENT, str(malformed(_METHOD.input_type.full_name)))
            except _Ended as ended:
                reply = STATUS, ended.status.SerializeToString()
        send_frame(connection, *reply)
        return True


__all__ = ["LocalSocket"]
