"""ModelService's method handlers: requests parsed by the service itself, so bytes that are no request get INVALID_ARGUMENT.

gRPC would parse a request before any servicer code runs and answer bytes that do not parse
(random bytes, a truncated message, a string field that is not UTF-8) with INTERNAL, as if the
server had failed. ``model_service`` registers the ModelService's methods with no deserializer
and parses the raw bytes in the call: a message that does not parse is the client's error,
INVALID_ARGUMENT, naming the message type it should have been. Evaluate and StreamEvaluate get
their requests as ``Received``: the batch's elements are left where they arrived, unparsed and
uncopied. A request stream is read through ``Incoming``, which waits for each message at most
the server's idle limit. Other services (health, reflection) keep gRPC's own parsing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError

from specbuilder_server.errors import ClientGone, RequestError, abort, stream_went_quiet
from specbuilder_wire.message_bytes import TooManyFields, cut_tensor_data
from specbuilder_wire.v1 import service_pb2

SERVICE = service_pb2.DESCRIPTOR.services_by_name["ModelService"]
BATCH_FIELDS = {"Evaluate": "input", "StreamEvaluate": "batch"}
"""The methods whose requests carry a batch, and its field: the servicer reads its elements where they arrived."""
INLINE_PARSE_BYTES = 1 << 20
"""Requests up to this size are parsed on the event loop; larger ones on a worker thread, so one
huge message does not stall every other call (for a request with a batch, the size without the batch's elements)."""
CUT_BYTES = 1 << 17
"""Requests with a batch smaller than this are parsed whole by protobuf: copying their elements twice
costs less than cutting them out in Python (docs/benchmarks.md, issue 16)."""
LOOP_FIELDS = 64
"""The most fields the event loop reads to cut a batch out of a request (a well-formed one has under a dozen)."""
M = TypeVar("M")
Blocking = Callable[..., Awaitable[Any]]
"""``await blocking(fn, *args)``: ``fn(*args)`` on the server's worker threads."""


@dataclass(frozen=True)
class Received(Generic[M]):
    """A request that carries a batch: the message parsed without the batch's elements, and the
    elements as a read-only view of the bytes gRPC handed over (None where they were not inline, or
    the request was small enough to be parsed whole: ``CUT_BYTES``, the elements then in the message).

    Protobuf would copy them twice, parsing and on reading ``Tensor.data``
    (``specbuilder_wire.message_bytes``); ``data`` is what ``specbuilder_wire.arrays.attached`` reads instead.
    """

    message: M
    data: memoryview | None


class Parser:
    """Bytes to one method's request: on the event loop when that is cheap, else on a worker thread.

    For a method in ``BATCH_FIELDS`` the request comes as ``Received``; what its parse costs is the
    cut (at most ``LOOP_FIELDS`` fields read on the loop) and the parse of what is left once the
    batch's elements are out, not the batch, so a 3 MB batch is parsed on the loop without a hop
    to a worker thread and back. Anything larger (a huge spec, bytes made of millions of fields)
    goes to a worker, so one message never stalls every other call.
    """

    def __init__(self, parse: Callable[[bytes], Any], batch_field: int | None = None) -> None:
        self._parse = parse
        self._batch_field = batch_field

    def __call__(self, raw: bytes) -> Any:
        """The request, whatever it costs (on any thread); ``DecodeError`` for bytes that do not parse."""
        if self._batch_field is None:
            return self._parse(raw)
        if len(raw) < CUT_BYTES:
            return Received(self._parse(raw), None)
        rest, data = cut_tensor_data(raw, self._batch_field)
        return Received(self._parse(rest), data)

    async def parsed(self, raw: bytes, blocking: Blocking) -> Any:
        """The request, parsed on the loop or, when that would cost too much, awaited from a worker thread."""
        if self._batch_field is None:
            return self._parse(raw) if len(raw) <= INLINE_PARSE_BYTES else await blocking(self._parse, raw)
        if len(raw) < CUT_BYTES:
            return Received(self._parse(raw), None)
        try:
            rest, data = cut_tensor_data(raw, self._batch_field, LOOP_FIELDS)
        except TooManyFields:
            return await blocking(self, raw)
        if len(rest) <= INLINE_PARSE_BYTES:
            return Received(self._parse(rest), data)
        return Received(await blocking(self._parse, rest), data)


def parser_for(parse: Callable[[bytes], Any], method: MethodDescriptor) -> Parser:
    """The ``Parser`` of ``method``'s requests (``parse``: protobuf's, for the whole message)."""
    field = BATCH_FIELDS.get(method.name)
    return Parser(parse, None if field is None else method.input_type.fields_by_name[field].number)


def malformed(type_name: str, which: str = "the request") -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{which} is not a serialized {type_name}: its bytes do not parse")


class Incoming:
    """The messages of a request stream, parsed, each waited for at most ``idle_seconds``."""

    def __init__(self, context: grpc.aio.ServicerContext, parse: Parser, type_name: str,
                 blocking: Blocking, idle_seconds: float) -> None:
        self._context = context
        self._parse = parse
        self._type_name = type_name
        self._blocking = blocking
        self._idle_seconds = idle_seconds
        self._count = 0

    async def next(self) -> Any | None:
        """The next message, None once the client has closed its side; ``RequestError`` for one that does
        not parse (INVALID_ARGUMENT) or that does not come within ``idle_seconds`` (DEADLINE_EXCEEDED)."""
        try:
            async with asyncio.timeout(self._idle_seconds):  # a timeout, not wait_for: no task made per message
                raw = await self._context.read()
        except TimeoutError:
            raise stream_went_quiet(self._idle_seconds) from None
        except Exception as error:  # noqa: BLE001 - gRPC's failed read of a call that is over (the server stopped under it)
            raise ClientGone(str(error)) from None
        if raw is grpc.aio.EOF:
            return None
        index, self._count = self._count, self._count + 1
        try:
            return await self._parse.parsed(raw, self._blocking)
        except DecodeError:
            raise malformed(self._type_name, f"message {index} of the request stream") from None


def model_service(servicer: Any, blocking: Blocking, idle_seconds: float) -> grpc.GenericRpcHandler:
    """The ModelService's handlers over ``servicer``: one coroutine per RPC, taking the parsed request
    (an ``Incoming`` for a request stream) and the context, and writing a response stream with
    ``context.write``."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        request_type = getattr(service_pb2, method.input_type.name)
        serialize = getattr(service_pb2, method.output_type.name).SerializeToString
        handlers[method.name] = _handler(method, getattr(servicer, method.name), parser_for(request_type.FromString, method),
                                         serialize, blocking, idle_seconds)
    return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)


def _handler(method: MethodDescriptor, behavior: Callable[..., Any], parse: Parser,
             serialize: Callable[[Any], bytes], blocking: Blocking, idle_seconds: float) -> grpc.RpcMethodHandler:
    type_name = method.input_type.full_name
    if method.client_streaming:

        async def many(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            return await behavior(Incoming(context, parse, type_name, blocking, idle_seconds), context)

        make = grpc.stream_stream_rpc_method_handler if method.server_streaming else grpc.stream_unary_rpc_method_handler
        return make(many, response_serializer=serialize)

    async def request(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await parse.parsed(raw, blocking)
        except DecodeError:
            await abort(context, malformed(type_name))

    async def one(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(await request(raw, context), context)

    make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
    return make(one, response_serializer=serialize)
