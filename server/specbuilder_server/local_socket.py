"""The server's end of the local socket (``specbuilder_wire.localsocket``): Evaluate and StreamEvaluate for same-host clients.

A Unix socket in a directory of its own (mode 0700, removed on stop) that only this user (or
root) can reach, checked again per connection with ``SO_PEERCRED``. Connections are served on the
server's event loop, at most ``max_connections`` at once, and one waiting for its next call
holds nothing but its buffer. Each frame is parsed like a gRPC request (``raw_handlers``: the
batch's elements, if inline, are not copied), checked against the same tokens and roles
(``auth.Access``: the hello's token must be one of the server's, with a role that may call
Evaluate; a stream needs one that may call StreamEvaluate) and message limit, and handed to the
same ``ModelServicer.evaluate`` or ``ModelServicer.stream_evaluate``, reading shared memory only
from regions the peer's own user owns (``SharedRegions.readable_by``); failures come back as the
``google.rpc.Status`` a gRPC call would have ended with. A stream also keeps to gRPC's other
limits: it takes one of the server's stream slots (``max_streams``), and a client that sends no
frame, or reads none of the answers, for ``stream_idle_seconds`` has its stream ended. Client
certificates play no part here: only the server's own user can reach the socket.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import socket
import struct
import tempfile
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from specbuilder_server.auth import Access
from specbuilder_server.errors import ClientGone, RequestError, as_request_error, exhausted, reader_stalled, rich_status, stream_went_quiet
from specbuilder_server.raw_handlers import SERVICE, Received, malformed, parser_for
from specbuilder_server.servicer import ModelServicer, StreamEnds
from specbuilder_wire.localsocket import CLOSE, EVALUATE, HEAD, HELLO, OK, PROTOCOL, STATUS, STREAM, frame
from specbuilder_wire.regions import SharedRegions
from specbuilder_wire.v1 import service_pb2

log = logging.getLogger("specbuilder_server")

HELLO_BYTES = 4096
"""Largest hello accepted: the protocol name and a token."""
HELLO_SECONDS = 10.0
"""How long a new connection may take to say hello before it is closed: a silent one holds a slot."""
_EVALUATE = SERVICE.methods_by_name["Evaluate"]
_STREAM = SERVICE.methods_by_name["StreamEvaluate"]
_PATHS = {method.name: f"/{SERVICE.full_name}/{method.name}" for method in (_EVALUATE, _STREAM)}
"""The RPCs the local socket answers, as the role table (``roles.ROLES``) names them."""
_PARSERS = {_EVALUATE.name: parser_for(service_pb2.EvaluateRequest.FromString, _EVALUATE),
            _STREAM.name: parser_for(service_pb2.StreamEvaluateRequest.FromString, _STREAM)}
"""Bytes to ``Received``, as the gRPC path parses them (``raw_handlers``)."""
_CREDENTIALS = struct.Struct("3i")
_DETAILS_KEY = "grpc-status-details-bin"
_HOW = "send it in the hello"
"""How a token travels on the local socket."""


def _status(code: grpc.StatusCode, message: str) -> bytes:
    """A ``STATUS`` frame's payload."""
    return status_pb2.Status(code=code.value[0], message=message).SerializeToString()


def _failure(error: Exception) -> bytes:
    """The ``STATUS`` payload for what a call failed with: the same status and details gRPC would send."""
    return dict(rich_status(as_request_error(error)).trailing_metadata)[_DETAILS_KEY]


def _too_big(length: int, limit: int) -> RequestError:
    return exhausted(f"the request is {length} bytes, over this server's limit of {limit} (max_message_mb)")


class _Connection:
    """One client's connection, past its hello: the peer's user and token, and its frames both ways."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uid: int, token: bytes, name: str) -> None:
        self.reader = reader
        self.writer = writer
        self.uid = uid
        self.token = token
        self.name = name
        """What the server's stream slots count this connection as."""

    async def send(self, kind: int, payload: bytes) -> None:
        self.writer.write(frame(kind, payload))
        await self.writer.drain()


class LocalSocket:
    """Listens on a fresh Unix socket (``path``) and answers Evaluate and StreamEvaluate frames until ``close``; lives on the server's event loop."""

    def __init__(self, servicer: ModelServicer, regions: SharedRegions, *, access: Access, max_message_bytes: int,
                 max_connections: int, idle_seconds: float) -> None:
        self._servicer = servicer
        self._regions = regions
        self._access = access
        self._max_message_bytes = max_message_bytes
        self._max_connections = max_connections
        self._idle_seconds = idle_seconds
        """A stream's ``stream_idle_seconds``."""
        self._folder = tempfile.mkdtemp(prefix="specbuilder-")
        self.path = os.path.join(self._folder, "evaluate.sock")
        """Where clients connect: named to them in the metadata of shared-memory Evaluate calls and of StreamEvaluate calls."""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._numbers = itertools.count()

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
            connection = await self._welcome(reader, writer)
            if connection is not None:
                while await self._answer(connection):
                    pass
        except (asyncio.IncompleteReadError, OSError, TimeoutError):
            pass  # the client went away, or never said hello: nobody to answer
        finally:
            self._connections.discard(task)
            writer.close()

    async def _welcome(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Connection | None:
        """Check the peer and its hello; answer OK or why not. The connection if it may go on."""
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
            elif (refused := self._access.refusal(token, _PATHS[_EVALUATE.name], _HOW)) is not None:
                problem = _status(*refused)
            else:
                writer.write(frame(OK, b""))
                await writer.drain()
                return _Connection(reader, writer, uid, token, f"local:{next(self._numbers)}")
        writer.write(frame(STATUS, problem))
        await writer.drain()
        return None

    async def _answer(self, connection: _Connection) -> bool:
        """Read one call's first frame and serve the call. True if the connection may go on."""
        kind, length = HEAD.unpack(await connection.reader.readexactly(HEAD.size))
        if kind not in (EVALUATE, STREAM):
            await connection.send(STATUS, _status(grpc.StatusCode.INVALID_ARGUMENT, (
                f"unknown frame kind {kind}: after the hello come Evaluate ({EVALUATE}) or stream ({STREAM}) frames")))
            return False
        if length > self._max_message_bytes:
            await connection.send(STATUS, _failure(_too_big(length, self._max_message_bytes)))
            return False
        raw = await connection.reader.readexactly(length)
        if kind == STREAM:
            return await self._stream(connection, raw)
        try:
            received = await self._parsed(_EVALUATE, raw, "the request")
            reply = frame(OK, (await self._servicer.evaluate(received, self._regions.readable_by(connection.uid),
                                                             self._servicer.budget(None))).SerializeToString())
        except Exception as error:  # noqa: BLE001 - every failure becomes a status
            reply = frame(STATUS, _failure(error))
        connection.writer.write(reply)
        await connection.writer.drain()
        return True

    async def _parsed(self, method: MethodDescriptor, raw: bytes, which: str) -> Any:
        """``raw`` as ``method``'s request (``Received``), parsed as gRPC's requests are; INVALID_ARGUMENT if it does not parse."""
        try:
            return await _PARSERS[method.name].parsed(raw, self._servicer.blocking)
        except DecodeError:
            raise malformed(method.input_type.full_name, which) from None

    async def _stream(self, connection: _Connection, first: bytes) -> bool:
        """Serve a stream whose first message is ``first``. True if the connection may go on (the stream ended with its summary)."""
        regions = self._regions.readable_by(connection.uid)
        count = itertools.count()
        pending: list[bytes] = [first]

        async def receive() -> Received[service_pb2.StreamEvaluateRequest] | None:
            index = next(count)
            raw = pending.pop() if pending else await self._next_stream_frame(connection)
            if raw is None:
                return None
            return await self._parsed(_STREAM, raw, f"message {index} of the request stream")

        async def send(message: service_pb2.StreamEvaluateResponse) -> None:
            connection.writer.write(frame(OK, message.SerializeToString()))
            try:
                async with asyncio.timeout(self._idle_seconds):  # a timeout, not wait_for: no task made per answer
                    await connection.writer.drain()
            except TimeoutError:
                raise reader_stalled(self._idle_seconds) from None
            except OSError as error:
                raise ClientGone(str(error)) from None

        try:
            refused = self._access.refusal(connection.token, _PATHS[_STREAM.name], _HOW)
            if refused is not None:
                raise RequestError(*refused)
            await self._servicer.stream_evaluate(StreamEnds(receive, send, lambda path, tensor: regions,
                                                            lambda: self._servicer.budget(None), connection.name))
            return True
        except ClientGone:
            return False
        except Exception as error:  # noqa: BLE001 - every failure becomes a status, and ends the connection
            connection.writer.write(frame(STATUS, _failure(error)))
            await asyncio.wait_for(connection.writer.drain(), self._idle_seconds)
            return False

    async def _next_stream_frame(self, connection: _Connection) -> bytes | None:
        """The next frame of a stream: a message's bytes, None for ``CLOSE``; ``RequestError`` for a frame that is
        neither, one over the message limit or none within ``stream_idle_seconds``; ``ClientGone`` if the connection ends."""
        try:
            async with asyncio.timeout(self._idle_seconds):  # a timeout, not wait_for: no task made per frame
                kind, length = HEAD.unpack(await connection.reader.readexactly(HEAD.size))
            if kind == CLOSE:
                return None
            if kind != STREAM:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"frame kind {kind} in a stream: a stream sends stream ({STREAM}) frames, then close ({CLOSE})")
            if length > self._max_message_bytes:
                raise _too_big(length, self._max_message_bytes)
            async with asyncio.timeout(self._idle_seconds):
                return await connection.reader.readexactly(length)
        except TimeoutError:
            raise stream_went_quiet(self._idle_seconds) from None
        except (asyncio.IncompleteReadError, OSError) as error:
            raise ClientGone(str(error)) from None


__all__ = ["LocalSocket"]
