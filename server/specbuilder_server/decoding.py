"""ModelService requests parsed by the service itself, so bytes that are no request get INVALID_ARGUMENT.

gRPC parses a request before any servicer code runs and answers bytes that do not parse
(random bytes, a truncated message, a string field that is not UTF-8) with INTERNAL, as if the
server had failed. ``ParseRequests`` hands the ModelService's methods the raw bytes instead and
parses them in the call: a message that does not parse is the client's error, INVALID_ARGUMENT,
naming the message type it should have been. Other services (health, reflection) keep gRPC's
own parsing. Evaluate and StreamEvaluate get their requests as ``Received``: the batch's
elements are left where they arrived, unparsed and uncopied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError

from specbuilder.v1 import service_pb2
from specbuilder.wireformat import cut_tensor_data
from specbuilder_server.errors import RequestError, abort

SERVICE = service_pb2.DESCRIPTOR.services_by_name["ModelService"]
BATCH_FIELDS = {"Evaluate": "input", "StreamEvaluate": "batch"}
"""The methods whose requests carry a batch, and its field: the servicer reads its elements where they arrived."""
M = TypeVar("M")


@dataclass(frozen=True)
class Received(Generic[M]):
    """A request that carries a batch: the message parsed without the batch's elements, and the
    elements as a read-only view of the bytes gRPC handed over (None where they were not inline).

    Protobuf would copy them twice, parsing and on reading ``Tensor.data``
    (``specbuilder.wireformat``); ``data`` is what ``specbuilder.wire.attached`` reads instead.
    """

    message: M
    data: memoryview | None


def parser_for(parse: Callable[[bytes], Any], method: MethodDescriptor) -> Callable[[bytes], Any]:
    """``parse``, or for a method in ``BATCH_FIELDS`` a parse into ``Received``."""
    field = BATCH_FIELDS.get(method.name)
    if field is None:
        return parse
    number = method.input_type.fields_by_name[field].number

    def received(raw: bytes) -> Received[Any]:
        rest, data = cut_tensor_data(raw, number)
        return Received(parse(rest), data)

    return received


def malformed(type_name: str, which: str = "the request") -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{which} is not a serialized {type_name}: its bytes do not parse")


def _parsed(raw: Iterator[bytes], parse: Callable[[bytes], Any], type_name: str) -> Iterator[Any]:
    """The messages of a request stream; a ``RequestError`` (which the servicer's ``handled`` answers) at the first that does not parse."""
    for index, data in enumerate(raw):
        try:
            yield parse(data)
        except DecodeError:
            raise malformed(type_name, f"message {index} of the request stream") from None


class ParseRequests(grpc.ServerInterceptor):
    """Parses ModelService requests inside the call, answering bytes that do not parse INVALID_ARGUMENT."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        service, _, name = details.method.lstrip("/").partition("/")
        if handler is None or handler.request_deserializer is None or service != SERVICE.full_name:
            return handler
        method = SERVICE.methods_by_name[name]
        parse, type_name = parser_for(handler.request_deserializer, method), method.input_type.full_name
        serialize = handler.response_serializer
        if handler.request_streaming:
            behavior = handler.stream_stream if handler.response_streaming else handler.stream_unary

            def many(raw: Iterator[bytes], context: grpc.ServicerContext) -> Any:
                return behavior(_parsed(raw, parse, type_name), context)

            make = grpc.stream_stream_rpc_method_handler if handler.response_streaming else grpc.stream_unary_rpc_method_handler
            return make(many, response_serializer=serialize)
        behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary

        def one(data: bytes, context: grpc.ServicerContext) -> Any:
            try:
                request = parse(data)
            except DecodeError:
                abort(context, malformed(type_name))
            return behavior(request, context)

        make = grpc.unary_stream_rpc_method_handler if handler.response_streaming else grpc.unary_unary_rpc_method_handler
        return make(one, response_serializer=serialize)
