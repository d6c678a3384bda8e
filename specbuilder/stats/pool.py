"""``Pool``: objects kept per module, for whoever next asks for one with the same key.

A monitor's layers and accumulators depend only on its module, its layer selection and its bins.
So when a monitor is garbage, its set goes back to a pool held against its module (``give``) and
the next monitor of that module with the same key takes it (``take``) instead of building and
allocating its own. Modules are held weakly: a module's objects go with it. Any thread may
give and take, and a give may run inside a take on the same thread (a finalizer during a
garbage collection), so the lock is reentrant. At most ``KEEP`` objects are kept per module and
key: as many as there were monitors at once, up to that.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Hashable
from typing import Generic, TypeVar

from torch import nn

T = TypeVar("T")
KEEP = 4
"""Objects kept per module and key; one given back beyond that is dropped."""


class Pool(Generic[T]):
    """Objects kept per (module, key); each one handed out at most once until it is given back."""

    def __init__(self) -> None:
        self._kept: weakref.WeakKeyDictionary[nn.Module, dict[Hashable, list[T]]] = weakref.WeakKeyDictionary()
        self._lock = threading.RLock()

    def take(self, module: nn.Module, key: Hashable) -> T | None:
        """One object given back for ``module`` and ``key``, now the caller's; None if there is none."""
        with self._lock:
            kept = self._kept.get(module, {}).get(key)
            return kept.pop() if kept else None

    def give(self, module: weakref.ref[nn.Module], key: Hashable, item: T) -> None:
        """Keep ``item`` for the next ``take`` of the module ``module`` refers to (dropped if it is
        gone, or ``KEEP`` are kept already)."""
        target = module()
        if target is None:
            return
        with self._lock:
            kept = self._kept.setdefault(target, {}).setdefault(key, [])
            if len(kept) < KEEP:
                kept.append(item)
