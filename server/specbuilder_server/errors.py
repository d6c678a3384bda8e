"""What the server answers when a call cannot be served: a gRPC status, never a traceback.

Every servicer method is wrapped by ``handled``: the core's own exceptions become the status
codes the protos promise (``SpecError`` -> INVALID_ARGUMENT with each problem's path, an
unknown model id -> NOT_FOUND, ...), field problems also travel as a ``google.rpc.BadRequest``
in the status details, and anything unexpected is logged here and answered INTERNAL with a
short message. A bad input never reaches the client as UNKNOWN.

A status travels in HTTP/2 trailers, which clients refuse beyond 8 KiB (they then see
RESOURCE_EXHAUSTED instead of the answer), while a message may echo megabytes of input or list
a thousand problems: ``rich_status`` keeps the message and the details within budgets.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from specbuilder.datasets import DataError
from specbuilder.errors import SpecError
from specbuilder.store import BadCursor, ModelNotFound, NoWeights, QuotaExceeded, StoreUnavailable
from specbuilder.training.config import ConfigError
from specbuilder_wire.arrays import TensorDenied, TensorError
from specbuilder_wire.results import Problem

log = logging.getLogger("specbuilder_server")

MAX_LISTED = 10
"""Problems spelled out in a status message; the BadRequest details carry more (within ``MAX_DETAILS_BYTES``)."""
MAX_MESSAGE_BYTES = 1024
"""Longest status message sent (UTF-8; gRPC percent-encodes it, at most tripling it)."""
MAX_DETAILS_BYTES = 2048
"""Most bytes of field violations in the BadRequest detail (base64 in the trailers: a third more)."""
MAX_FIELD_BYTES = 256
"""Longest path, description or reason of one field violation."""


class RequestError(Exception):
    """A call that cannot be served, as the status the client gets; ``problems`` name fields."""

    def __init__(self, code: grpc.StatusCode, message: str, problems: Sequence[Problem] = (),
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.problems = list(problems)
        self.metadata = metadata
        """Trailing metadata that travels with the status (beside its details)."""


class ClientGone(Exception):
    """The call ended under the server (its client cancelled or went away): there is nobody to answer."""


def invalid(path: str, message: str, kind: str = "invalid") -> RequestError:
    """INVALID_ARGUMENT for one field: ``path: message``."""
    problem = Problem(path, message, kind)
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(problem), [problem])


def exhausted(message: str) -> RequestError:
    """RESOURCE_EXHAUSTED: a server limit was reached; the message says which and what to do."""
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def stream_went_quiet(seconds: float) -> RequestError:
    """DEADLINE_EXCEEDED for a stream whose client sent no message for ``seconds`` (``stream_idle_seconds``)."""
    return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, (
        f"the stream sent no message for {seconds:g} s, this server's limit (stream_idle_seconds); "
        "send the next message sooner, or close the stream and open a new one when there is more"))


def reader_stalled(seconds: float) -> RequestError:
    """DEADLINE_EXCEEDED for a stream whose client read none of the server's messages for ``seconds`` (``stream_idle_seconds``)."""
    return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, (
        f"the client read none of the server's messages for {seconds:g} s, this server's limit (stream_idle_seconds)"))


def spec_problems(error: SpecError, prefix: str = "") -> RequestError:
    """A ``SpecError`` (or ``ConfigError``) as INVALID_ARGUMENT, paths under ``prefix``.

    A spec refused only for its size is a limit, so it is RESOURCE_EXHAUSTED.
    """
    problems = [Problem(_join(prefix, p.path), p.message, p.type) for p in error.problems]
    text = "; ".join(map(str, problems[:MAX_LISTED]))
    if len(problems) > MAX_LISTED:
        text += f"; and {len(problems) - MAX_LISTED} more (the BadRequest details list more of them)"
    code = grpc.StatusCode.INVALID_ARGUMENT
    if problems and all(p.type == "too_many_parameters" for p in problems):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    return RequestError(code, text, problems)


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    if not path:
        return prefix
    return prefix + ("" if path.startswith("[") else ".") + path


def as_request_error(error: Exception) -> RequestError:
    """The status an exception from the core stands for; unexpected ones are logged, INTERNAL."""
    if isinstance(error, RequestError):
        return error
    if isinstance(error, ConfigError):
        return spec_problems(error, "config")
    if isinstance(error, SpecError):
        return spec_problems(error)
    if isinstance(error, TensorDenied):
        return RequestError(grpc.StatusCode.PERMISSION_DENIED, str(error), [Problem(error.path, error.message, "permission")])
    if isinstance(error, TensorError):
        return invalid(error.path, error.message, "tensor")
    if isinstance(error, DataError):
        return invalid("data", str(error), "data")
    if isinstance(error, StoreUnavailable):
        return RequestError(grpc.StatusCode.UNAVAILABLE, str(error))
    if isinstance(error, QuotaExceeded):
        return exhausted(str(error))
    if isinstance(error, BadCursor):
        return invalid("page_token", str(error), "page_token")
    if isinstance(error, ModelNotFound):
        return RequestError(grpc.StatusCode.NOT_FOUND, str(error))
    if isinstance(error, NoWeights):
        return RequestError(grpc.StatusCode.FAILED_PRECONDITION, str(error))
    log.error("internal error serving a call", exc_info=error)
    return RequestError(grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__}); the server's log has the details")


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary), ``...`` marking a cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode("utf-8")
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


def rich_status(error: RequestError) -> grpc.Status:
    """The status with a ``google.rpc.BadRequest`` detail listing the field problems, as many as fit the budget."""
    status = status_pb2.Status(code=getattr(code_pb2, error.code.name), message=_clip(error.message, MAX_MESSAGE_BYTES))
    violations, size = [], 0
    for p in error.problems:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=_clip(p.path, MAX_FIELD_BYTES), description=_clip(p.message, MAX_FIELD_BYTES), reason=_clip(p.type, MAX_FIELD_BYTES),
        )
        size += violation.ByteSize() + 3  # the field's tag and length
        if size > MAX_DETAILS_BYTES:
            break
        violations.append(violation)
    if violations:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=violations))
        status.details.append(detail)
    return rpc_status.to_status(status)


async def abort(context: grpc.aio.ServicerContext, error: Exception) -> NoReturn:
    """End the call with the status ``error`` stands for (raises, as ``context.abort`` does)."""
    request_error = as_request_error(error)
    status = rich_status(request_error)
    await context.abort(status.code, status.details, (*status.trailing_metadata, *request_error.metadata))
    raise AssertionError("context.abort returned")  # it always raises


Method = TypeVar("Method", bound=Callable[..., Any])


def handled(method: Method) -> Method:
    """Wrap a servicer coroutine so every failure becomes a proper status; a call whose client has
    gone (cancelled, deadline passed) is not answered: nobody is there to read it. Each call is
    counted in the servicer's ``metrics`` by how it ended."""

    name = method.__name__

    @functools.wraps(method)
    async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started, code = time.perf_counter(), "CANCELLED"  # unless it ends otherwise: the call was cancelled under it
        try:
            try:
                answer = await method(self, request, context)
                code = "OK"
                return answer
            except ClientGone:
                return None
            except Exception as error:  # noqa: BLE001 - every failure becomes a status
                failure = as_request_error(error)
            code = failure.code.name
            if not context.done():
                await abort(context, failure)
            return None
        finally:
            self.metrics.rpc(name, code, time.perf_counter() - started)

    return call  # type: ignore[return-value]
