"""The client's one exception family: every failed call raises a ``SpecbuilderError``.

A ``grpc.RpcError`` (or the local socket's ``google.rpc.Status``) is translated here and raised
``from None`` (as tritonclient does), so a user sees the status code and the server's message,
never a raw gRPC traceback. ``INVALID_ARGUMENT``
also carries the server's ``google.rpc.BadRequest`` field violations as ``violations``, each with
its path (``layers[2].negative_slope``).
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from specbuilder_wire.results import Problem

Violation = Problem
"""One problem with a request, at one path (``layers[2].negative_slope``): the wire package's ``Problem``, as the
server's BadRequest details and ValidateSpec's violations carry it."""


class SpecbuilderError(Exception):
    """A call failed: ``code`` is the gRPC status code, ``message`` the server's words."""

    def __init__(self, code: grpc.StatusCode, message: str, violations: list[Violation] | None = None) -> None:
        self.code = code
        self.message = message
        self.violations = list(violations or [])
        super().__init__(f"{code.name}: {message}")


class InvalidArgument(SpecbuilderError):
    """The spec, a tensor or an option is wrong; ``violations`` name each path."""


class NotFound(SpecbuilderError):
    """No model with that id."""


class FailedPrecondition(SpecbuilderError):
    """The model exists but cannot do that now, such as evaluating a run that stored no weights."""


class ResourceExhausted(SpecbuilderError):
    """A server limit (message size, batch, parameters, concurrent runs) was reached."""


class Unauthenticated(SpecbuilderError):
    """The token is missing or wrong."""


class PermissionDenied(SpecbuilderError):
    """The caller may not do this: its token's role may not make the call (an inference token calling Train), or the
    call names something the caller may not use (another user's shared memory)."""


class Cancelled(SpecbuilderError):
    """The call was cancelled."""


class DeadlineExceeded(SpecbuilderError):
    """The call's deadline passed."""


class Unavailable(SpecbuilderError):
    """The server cannot be reached (not started, wrong address, or going away)."""


_BY_CODE: dict[grpc.StatusCode, type[SpecbuilderError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _violations(error: grpc.RpcError) -> list[Violation]:
    """The field violations of a ``google.rpc.BadRequest`` in the status details, if any."""
    if not isinstance(error, grpc.Call):
        return []
    status = rpc_status.from_call(error)
    return [] if status is None else _bad_request(status)


def _bad_request(status: status_pb2.Status) -> list[Violation]:
    found: list[Violation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            found += [Violation(v.field, v.description, v.reason) for v in request.field_violations]
    return found


def from_rpc(error: grpc.RpcError) -> SpecbuilderError:
    """The client's exception for a failed gRPC call, code, message and violations kept."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    message = (error.details() if isinstance(error, grpc.Call) else "") or str(error)
    return _BY_CODE.get(code, SpecbuilderError)(code, message, _violations(error))


def from_status(status: status_pb2.Status) -> SpecbuilderError:
    """The client's exception for a ``google.rpc.Status`` (how the local socket ends a failed call)."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return _BY_CODE.get(code, SpecbuilderError)(code, status.message, _bad_request(status))


__all__ = [
    "Cancelled", "DeadlineExceeded", "FailedPrecondition", "InvalidArgument", "NotFound", "PermissionDenied", "ResourceExhausted",
    "SpecbuilderError", "Unauthenticated", "Unavailable", "Violation", "from_rpc", "from_status",
]
