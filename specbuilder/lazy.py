"""Package attributes that import their module on first use (PEP 562), so a light import stays light.

``specbuilder`` and ``specbuilder.training`` export torch-backed names without importing torch
until one of them is read: validating a spec or a config never pays for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names[name]`` is the module ``name`` is imported
    from when first read; any other name raises ``AttributeError``, as a missing attribute does."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
