"""specbuilder's gRPC service: a thin translator from protobuf to the core library.

>>> from specbuilder_server import ServerConfig, start_server      # doctest: +SKIP
>>> with start_server(ServerConfig(port=0, store="models")) as server:
...     print(server.address)                                       # 127.0.0.1:<free port>

``specbuilder serve`` runs the same from the command line. Names load on first use, so
``specbuilder_server.config`` can be read without importing grpc or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "RunningServer": "specbuilder_server.lifecycle",
    "ServerStartError": "specbuilder_server.lifecycle",
    "start_server": "specbuilder_server.lifecycle",
    "ServerConfig": "specbuilder_server.config",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'specbuilder_server' has no attribute {name!r}")
