"""Bearer-token authentication: one server interceptor in front of every service but health.

A server started with a token answers UNAUTHENTICATED to any call whose metadata lacks
``authorization: Bearer <token>`` or carries another token. The refusal is decided from the
call's headers alone and answered at once: it does not wait for the request message, so a
client that opens calls and never sends them holds nothing. Health checks need no token, so load
balancers and orchestrators can probe. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _denied(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler that answers UNAUTHENTICATED without reading a request: it takes the request as a stream it never reads."""

    async def deny(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    make = grpc.stream_stream_rpc_method_handler if handler.response_streaming else grpc.stream_unary_rpc_method_handler
    return make(deny)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Lets a call through only with the server's bearer token (health checks always)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        sent = [value for key, value in details.invocation_metadata or () if key == "authorization"]
        if not sent:
            return _denied(handler, "this server needs a token: send metadata 'authorization: Bearer <token>'")
        value = sent[0].encode() if isinstance(sent[0], str) else sent[0]
        if len(sent) > 1 or not hmac.compare_digest(value, self._expected):
            return _denied(handler, "the token sent in 'authorization' metadata is not this server's token")
        return handler
