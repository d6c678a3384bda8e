"""Models ready to evaluate: specs compiled once per hash, stored models loaded once per id.

Compiled specs come from the core's ``CompileCache`` (a bounded LRU by canonical hash), found
directly by the bytes of the spec a request sends when it was sent before; stored
models from a bounded LRU of their own, keyed by id (their weights differ from a fresh
compile's) and dropped when the model is deleted. A cached stored model is served only after
the store confirms its id still exists (one indexed lookup), so a model deleted through another
server sharing the store is not evaluated here either. Cached modules are shared by every call,
so each carries a lock: a forward pass and the attaching of a statistics monitor happen under
it, and a monitor only ever sees the batches of the call that attached it.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from specbuilder.compiler import CompileCache
from specbuilder.spec import ModelSpec, Style
from specbuilder.store import ModelStore
from specbuilder.v1 import service_pb2
from specbuilder_server import requests


@dataclass(eq=False)
class Ready:
    """A module in eval mode, its spec, where and in what dtype it computes, and the lock every use takes."""

    spec: ModelSpec
    module: nn.Module
    device: torch.device
    dtype: torch.dtype
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, module: nn.Module, device: torch.device, lock: threading.Lock | None = None) -> Ready:
        """``module`` (compiled by specbuilder: it carries ``.spec``); a stateless one computes in float32."""
        first = next(itertools.chain(module.parameters(), module.buffers()), None)
        return cls(module.spec, module, device, torch.float32 if first is None else first.dtype, lock or threading.Lock())


class Models:
    """Where Evaluate and StreamEvaluate get their modules from."""

    def __init__(self, store: ModelStore, device: torch.device, cache_size: int, max_params: int) -> None:
        self._store = store
        self._device = device
        self._max_params = max_params
        self._sources: OrderedDict[bytes, Ready] = OrderedDict()
        self._compiled = CompileCache(cache_size)
        self._locks: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
        """The lock of each compiled module in use: a lock, not a ``Ready``, which would hold its key and so keep
        every module ever compiled alive after the caches let it go."""
        self._stored: OrderedDict[str, Ready] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()

    def compiled(self, spec: ModelSpec, style: Style = "sequential") -> Ready:
        """The spec compiled (freshly initialized weights), shared by every call with the same spec and style."""
        module = self._compiled.get(spec, style, self._device)
        with self._lock:
            lock = self._locks.get(module)
            if lock is None:
                lock = self._locks[module] = threading.Lock()
        return Ready.of(module, self._device, lock)

    def for_source(self, source: service_pb2.SpecSource, path: str) -> Ready:
        """``compiled`` for the spec a request sends, remembered by the source's bytes.

        A client sends the same spec call after call; validating and hashing it again each time
        would cost more than the forward pass of a small model.
        """
        key = source.SerializeToString(deterministic=True)
        with self._lock:
            ready = self._sources.get(key)
            if ready is not None:
                self._sources.move_to_end(key)
                return ready
        ready = self.compiled(requests.spec_of(source, path, self._max_params))
        with self._lock:
            self._sources[key] = ready
            while len(self._sources) > self._size:
                self._sources.popitem(last=False)
        return ready

    def stored(self, model_id: str) -> Ready:
        """A stored model with its weights; ``ModelNotFound`` / ``NoWeights`` from the store.

        A cached one is returned only while the store still has its id: replicas share the
        store, not this cache, and another may have deleted it.
        """
        with self._lock:
            ready = self._stored.get(model_id)
        if ready is not None:
            if self._store.exists(model_id):
                with self._lock:
                    if model_id in self._stored:
                        self._stored.move_to_end(model_id)
                return ready
            self.forget(model_id)
        module = self._store.load(model_id, self._device).eval()
        with self._lock:
            ready = self._stored.setdefault(model_id, Ready.of(module, self._device))
            while len(self._stored) > self._size:
                self._stored.popitem(last=False)
            return ready

    def forget(self, model_id: str) -> None:
        """Drop a deleted model, so it cannot be evaluated from the cache."""
        with self._lock:
            self._stored.pop(model_id, None)
