"""Bearer tokens and their roles: one server interceptor in front of every service but health.

A server started with tokens answers UNAUTHENTICATED to any call whose metadata lacks
``authorization: Bearer <token>`` or carries a token it does not know, and PERMISSION_DENIED to a
call its token's role may not make (``roles``: an inference token calling Train), naming the role
needed. Either refusal is decided from the call's headers alone and answered at once: it does not
wait for the request message, so a client that opens calls and never sends them holds nothing, and
a refused call does no work. Health checks need no token, so load balancers and orchestrators can
probe.

A token is looked up by comparing its SHA-256 digest with every known token's, each with
``hmac.compare_digest`` and with no early exit: the time taken says neither which token matched nor
how long the known ones are. Client certificates (``--tls-client-ca``) are checked by gRPC's TLS
before any of this runs.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio

from specbuilder_server.roles import Role, denial

HEALTH_PREFIX = "/grpc.health.v1.Health/"
BEARER = b"Bearer "
HOW = "send metadata 'authorization: Bearer <token>'"
"""How a gRPC call carries its token."""


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class Access:
    """The server's tokens and the role each one has; empty when the server has no tokens (every caller is trusted)."""

    def __init__(self, full: Iterable[str], inference: Iterable[str]) -> None:
        self._known = [(_digest(token.encode()), Role.FULL) for token in dict.fromkeys(full)]
        self._known += [(_digest(token.encode()), Role.INFERENCE) for token in dict.fromkeys(inference)]

    def __bool__(self) -> bool:
        """Whether calls must carry a token."""
        return bool(self._known)

    def role_of(self, token: bytes) -> Role | None:
        """The role of ``token``, None if the server does not know it; compares with every known token (no early exit)."""
        digest = _digest(token)
        found = None
        for known, role in self._known:
            if hmac.compare_digest(digest, known):
                found = role
        return found

    def refusal(self, token: bytes | None, method: str, how: str) -> tuple[grpc.StatusCode, str] | None:
        """Why a call to ``method`` (an RPC's path) with ``token`` may not go on: a status code and a message for
        people; None when it may. ``how`` says how to send a token on the caller's path (gRPC metadata, the hello)."""
        if not self._known:
            return None
        if not token:
            return grpc.StatusCode.UNAUTHENTICATED, f"this server needs a token: {how}"
        role = self.role_of(token)
        if role is None:
            return grpc.StatusCode.UNAUTHENTICATED, "the token sent is not one of this server's tokens"
        why = denial(role, method)
        return None if why is None else (grpc.StatusCode.PERMISSION_DENIED, why)


def _refused(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler that answers ``code`` without reading a request: it takes the request as a stream it never reads."""

    async def refuse(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    make = grpc.stream_stream_rpc_method_handler if handler.response_streaming else grpc.stream_unary_rpc_method_handler
    return make(refuse)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Lets a call through only with a known bearer token whose role may make it (health checks always)."""

    def __init__(self, access: Access) -> None:
        self._access = access

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        sent = [value for key, value in details.invocation_metadata or () if key == "authorization"]
        values = [value.encode() if isinstance(value, str) else value for value in sent]
        if len(values) > 1 or (values and not values[0].startswith(BEARER)):
            return _refused(handler, grpc.StatusCode.UNAUTHENTICATED, f"the 'authorization' metadata is not in the form: {HOW}")
        refused = self._access.refusal(values[0].removeprefix(BEARER) if values else None, details.method, HOW)
        return handler if refused is None else _refused(handler, *refused)
