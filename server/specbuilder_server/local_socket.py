"""The server's end of the local socket (``specbuilder_wire.localsocket``): Evaluate for same-host clients.

A Unix socket in a directory of its own (mode 0700, removed on stop) that only this user (or
root) can reach, checked again per connection with ``SO_PEERCRED``. Connections are served on the
server's event loop, at most ``max_connections`` at once, and one waiting for its next frame
holds nothing but its buffer. Each frame is parsed like a gRPC request (``raw_handlers``: the
batch's elements, if inline, are not copied), checked against the same tokens and roles
(``auth.Access``: the hello's token must be one of the server's, with a role that may call
Evaluate) and message limit, and handed to the same ``ModelServicer.evaluate``, reading shared
memory only from regions the peer's own user owns (``SharedRegions.readable_by``); failures come
back as the ``google.rpc.Status`` a gRPC call would have ended with. Client certificates play no
part here: only the server's own user can reach the socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import struct
import tempfile

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from specbuilder_server.auth import Access
from specbuilder_server.errors import as_request_error, rich_status
from specbuilder_server.raw_handlers import SERVICE, malformed, parser_for
from specbuilder_server.servicer import ModelServicer
from specbuilder_wire.localsocket import EVALUATE, HEAD, HELLO, OK, PROTOCOL, STATUS, frame
from specbuilder_wire.regions import SharedRegions
from specbuilder_wire.v1 import service_pb2

log = logging.getLogger("specbuilder_server")

HELLO_BYTES = 4096
"""Largest hello accepted: the protocol name and a token."""
HELLO_SECONDS = 10.0
"""How long a new connection may take to say hello before it is closed: a silent one holds a slot."""
_METHOD = SERVICE.methods_by_name["Evaluate"]
_PATH = f"/{SERVICE.full_name}/{_METHOD.name}"
"""The RPC the local socket answers, as the role table (``roles.ROLES``) names it."""
_parse = parser_for(service_pb2.EvaluateRequest.FromString, _METHOD)
"""Bytes to ``Received``, as the gRPC path parses them (``raw_handlers``)."""
_CREDENTIALS = struct.Struct("3i")
_DETAILS_KEY = "grpc-status-details-bin"


def _status(code: grpc.StatusCode, message: str) -> bytes:
    """A ``STATUS`` frame's payload."""
    return status_pb2.Status(code=code.value[0], message=message).SerializeToString()


def _failure(error: Exception) -> bytes:
    """The ``STATUS`` payload for what a call failed with: the same status and details gRPC would send."""
    return dict(rich_status(as_request_error(error)).trailing_metadata)[_DETAILS_KEY]


class LocalSocket:
    """Listens on a fresh Unix socket (``path``) and answers Evaluate frames until ``close``; lives on the server's event loop."""

    def __init__(self, servicer: ModelServicer, regions: SharedRegions, *, access: Access, max_message_bytes: int,
                 max_connections: int) -> None:
        self._servicer = servicer
        self._regions = regions
        self._access = access
        self._max_message_bytes = max_message_bytes
        self._max_connections = max_connections
        self._folder = tempfile.mkdtemp(prefix="specbuilder-")
        self.path = os.path.join(self._folder, "evaluate.sock")
        """Where clients connect: named to them in the trailing metadata of shared-memory Evaluate calls."""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path, backlog=self._max_connections)

    async def close(self, grace: float) -> None:
        """Stop accepting, let calls in flight finish (up to ``grace`` seconds), remove the socket."""
        if self._server is not None:
            self._server.close()
        if self._connections:
            _, pending = await asyncio.wait(self._connections, timeout=grace)
            for task in pending:
                task.cancel()
        shutil.rmtree(self._folder, ignore_errors=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            if len(self._connections) >= self._max_connections:
                writer.write(frame(STATUS, _status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                   f"the local socket serves {self._max_connections} connections at once; use gRPC")))
                await writer.drain()
                return
            self._connections.add(task)
            uid = await self._welcome(reader, writer)
            if uid is not None:
                while await self._answer(reader, writer, uid):
                    pass
        except (asyncio.IncompleteReadError, OSError, TimeoutError):
            pass  # the client went away, or never said hello: nobody to answer
        finally:
            self._connections.discard(task)
            writer.close()

    async def _welcome(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int | None:
        """Check the peer and its hello; answer OK or why not. The peer's uid if the connection may go on."""
        peer = writer.get_extra_info("socket")
        _, uid, _ = _CREDENTIALS.unpack(peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
        kind, length = HEAD.unpack(await asyncio.wait_for(reader.readexactly(HEAD.size), HELLO_SECONDS))
        if uid not in (os.getuid(), 0):
            problem = _status(grpc.StatusCode.PERMISSION_DENIED, "the local socket serves its own user only")
        elif kind != HELLO or length > HELLO_BYTES:
            problem = _status(grpc.StatusCode.INVALID_ARGUMENT, f"a connection must start with a hello frame of at most {HELLO_BYTES} bytes")
        else:
            protocol, _, token = (await asyncio.wait_for(reader.readexactly(length), HELLO_SECONDS)).partition(b"\0")
            if protocol != PROTOCOL:
                problem = _status(grpc.StatusCode.FAILED_PRECONDITION, f"this server speaks {PROTOCOL.decode()}, the client {protocol[:64]!r}")
            elif (refused := self._access.refusal(token, _PATH, "send it in the hello")) is not None:
                problem = _status(*refused)
            else:
                writer.write(frame(OK, b""))
                await writer.drain()
                return uid
        writer.write(frame(STATUS, problem))
        await writer.drain()
        return None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uid: int) -> bool:
        """Read one Evaluate frame and answer it. True if the connection may go on."""
        kind, length = HEAD.unpack(await reader.readexactly(HEAD.size))
        if kind != EVALUATE:
            writer.write(frame(STATUS, _status(grpc.StatusCode.INVALID_ARGUMENT,
                                               f"unknown frame kind {kind}: after the hello only Evaluate frames ({EVALUATE}) come")))
            await writer.drain()
            return False
        if length > self._max_message_bytes:
            writer.write(frame(STATUS, _status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request is {length} bytes, over this server's limit of {self._max_message_bytes} (max_message_mb)")))
            await writer.drain()
            return False
        raw = await reader.readexactly(length)
        try:
            received = _parse(raw)
            regions = self._regions.readable_by(uid)
            reply = frame(OK, (await self._servicer.evaluate(received, regions, self._servicer.budget(None))).SerializeToString())
        except DecodeError:
            reply = frame(STATUS, _status(grpc.StatusCode.INVALID_ARGUMENT, str(malformed(_METHOD.input_type.full_name))))
        except Exception as error:  # noqa: BLE001 - every failure becomes a status
            reply = frame(STATUS, _failure(error))
        writer.write(reply)
        await writer.drain()
        return True


__all__ = ["LocalSocket"]
