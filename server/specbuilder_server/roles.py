"""Which role each RPC needs: the one table the token check, the local socket, the docs and the tests read.

A server's tokens each have a role. ``full`` (``--token``) may call every RPC. ``inference``
(``--inference-token``) may read and evaluate: the RPCs listed here as ``INFERENCE``. An RPC that
is not in the table needs ``full``: a new RPC stays closed to inference tokens until it is
listed here (deny by default). Health checks need no token at all (``auth``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from grpc_reflection.v1alpha import reflection

from specbuilder_wire.v1 import service_pb2

MODEL_SERVICE = service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
"""``specbuilder.v1.ModelService``."""


class Role(enum.Enum):
    """What a token may do: ``FULL`` everything, ``INFERENCE`` the RPCs the table lists for it."""

    INFERENCE = "inference"
    FULL = "full"

    def may_call(self, method: str) -> bool:
        """Whether a caller with this role may call ``method`` (a path, ``/specbuilder.v1.ModelService/Train``)."""
        return self is Role.FULL or needed(method) is Role.INFERENCE


_MODEL_SERVICE_ROLES = {
    "ValidateSpec": Role.INFERENCE,
    "CompileSpec": Role.INFERENCE,
    "Evaluate": Role.INFERENCE,
    "StreamEvaluate": Role.INFERENCE,
    "ListModels": Role.INFERENCE,
    "GetModel": Role.INFERENCE,
    "ListActivations": Role.INFERENCE,
    "ListLayers": Role.INFERENCE,
    "ListDatasets": Role.INFERENCE,
    "GetSchema": Role.INFERENCE,
    "Train": Role.FULL,
    "DeleteModel": Role.FULL,
    "ExportModel": Role.FULL,
}

ROLES: Mapping[str, Role] = MappingProxyType({
    **{f"/{MODEL_SERVICE}/{name}": role for name, role in _MODEL_SERVICE_ROLES.items()},
    f"/{reflection.SERVICE_NAME}/ServerReflectionInfo": Role.INFERENCE,  # describing the service reads nothing stored
})
"""The role each RPC needs, by its path (``/specbuilder.v1.ModelService/Evaluate``); an RPC not here needs ``FULL``."""


def needed(method: str) -> Role:
    """The role ``method`` (an RPC's path) needs: its entry in ``ROLES``, else ``FULL``."""
    return ROLES.get(method, Role.FULL)


def inference_rpcs() -> list[str]:
    """The ModelService RPCs an inference token may call, by name, in the table's order."""
    prefix = f"/{MODEL_SERVICE}/"
    return [path.removeprefix(prefix) for path, role in ROLES.items() if role is Role.INFERENCE and path.startswith(prefix)]


def denial(role: Role, method: str) -> str | None:
    """Why a caller with ``role`` may not call ``method``, for people; None when it may."""
    if role.may_call(method):
        return None
    name = method.rsplit("/", 1)[-1]
    return (f"{name} needs the full-access role (a --token of the server); this call's token has the inference role, "
            f"which may call only {', '.join(inference_rpcs())}")
