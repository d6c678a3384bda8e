"""Bearer-token authentication: one server interceptor in front of every service but health.

A server started with a token answers UNAUTHENTICATED to any call whose metadata lacks
``authorization: Bearer <token>`` or carries another token, before the request is even
deserialized. Health checks need no token, so load balancers and orchestrators can probe.
Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _denied(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only answers UNAUTHENTICATED."""

    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class TokenAuth(grpc.ServerInterceptor):
    """Lets a call through only with the server's bearer token (health checks always)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        sent = [value for key, value in details.invocation_metadata if key == "authorization"]
        if not sent:
            return _denied(handler, "this server needs a token: send metadata 'authorization: Bearer <token>'")
        value = sent[0].encode() if isinstance(sent[0], str) else sent[0]
        if len(sent) > 1 or not hmac.compare_digest(value, self._expected):
            return _denied(handler, "the token sent in 'authorization' metadata is not this server's token")
        return handler
