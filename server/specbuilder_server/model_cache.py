"""Models ready to evaluate: specs compiled once per hash, stored models loaded once per id, in one cache bounded in bytes.

``ModelCache`` keeps compiled specs (keyed by canonical hash, style and seed: a spec's weights are
initialized from the request's seed, so every server gives the same spec, seed and input the same
outputs, after a restart or an eviction too) and stored models (keyed by id: their weights are the
stored ones) in one least-recently-used order, bounded by
count and by the bytes of their parameters and buffers: a model larger than the whole budget is
served for its call and not kept. The bytes of the request sources that lead to a compiled spec
(``Models.for_source``: a client sends the same spec call after call, and validating and hashing
it again would cost more than a small model's forward) count against the same budget. A cached
stored model is served only after the store confirms its id still exists (one indexed lookup), so
a model deleted through another server sharing the store is not evaluated here either. Cached
modules are shared by every call, so each carries a lock: a forward pass and the attaching of a
statistics monitor happen under it, and a monitor only ever sees the batches of the call that
attached it.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from specbuilder.compiler import compile_spec
from specbuilder.spec import ModelSpec, Style
from specbuilder.store import ModelStore
from specbuilder_server import request_fields
from specbuilder_server.torch_tensors import largest_sample
from specbuilder_wire.v1 import service_pb2

Key = tuple[str, str, str, int]
"""``("spec", spec_hash, style, seed)`` or ``("model", model_id, "", 0)``."""


@dataclass(eq=False)
class Ready:
    """A module in eval mode, its spec, where and in what dtype it computes, and the lock every use takes."""

    spec: ModelSpec
    module: nn.Module
    device: torch.device
    dtype: torch.dtype
    lock: threading.Lock = field(default_factory=threading.Lock)
    samples_independent: bool = field(init=False)
    """``spec.samples_independent``, read once: whether calls on the model may share a forward (``batching``)."""
    sample_elements: int = field(init=False)
    """The most elements one sample makes a layer hold (``torch_tensors.largest_sample``): what bounds a merged batch's rows."""

    def __post_init__(self) -> None:
        self.samples_independent = self.spec.samples_independent
        self.sample_elements = largest_sample(self.spec)[0]

    @classmethod
    def of(cls, module: nn.Module, device: torch.device) -> Ready:
        """``module`` (compiled by specbuilder: it carries ``.spec``); a stateless one computes in float32."""
        first = next(itertools.chain(module.parameters(), module.buffers()), None)
        return cls(module.spec, module, device, torch.float32 if first is None else first.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the module's parameters and buffers."""
        return sum(t.numel() * t.element_size() for t in itertools.chain(self.module.parameters(), self.module.buffers()))


class ModelCache:
    """A least-recently-used map of ``Ready`` models, at most ``max_items`` of them and ``max_bytes`` in all; thread-safe."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[Key, tuple[Ready, int]] = OrderedDict()
        self._sources: OrderedDict[bytes, Key] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes held: the kept models' parameters and buffers, and the remembered sources."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key) -> Ready | None:
        with self._lock:
            kept = self._items.get(key)
            if kept is None:
                return None
            self._items.move_to_end(key)
            return kept[0]

    def by_source(self, source: bytes) -> Ready | None:
        """The model a remembered request source led to, while it is kept."""
        with self._lock:
            key = self._sources.get(source)
        return None if key is None else self.get(key)

    def put(self, key: Key, ready: Ready, source: bytes | None = None) -> Ready:
        """Keep ``ready`` under ``key`` (the one kept already wins), and ``source`` as a way to it; the one kept."""
        size = ready.nbytes
        with self._lock:
            kept = self._items.get(key)
            if kept is not None:
                ready = kept[0]
            elif size <= self.max_bytes:
                self._items[key] = (ready, size)
                self._bytes += size
            if source is not None and key in self._items and len(source) <= self.max_bytes:
                if self._sources.pop(source, None) is not None:
                    self._bytes -= len(source)
                self._sources[source] = key
                self._bytes += len(source)
            self._evict()
        return ready

    def drop(self, key: Key) -> None:
        with self._lock:
            kept = self._items.pop(key, None)
            if kept is not None:
                self._bytes -= kept[1]

    def _evict(self) -> None:
        while len(self._sources) > self.max_items or (self._bytes > self.max_bytes and self._sources):
            self._bytes -= len(self._sources.popitem(last=False)[0])
        while len(self._items) > self.max_items or self._bytes > self.max_bytes:
            self._bytes -= self._items.popitem(last=False)[1][1]


class Models:
    """Where Evaluate and StreamEvaluate get their modules from."""

    def __init__(self, store: ModelStore, device: torch.device, cache: ModelCache, max_params: int) -> None:
        self._store = store
        self.device = device
        """Where every model computes: the server's device."""
        self._max_params = max_params
        self.cache = cache

    def compiled(self, spec: ModelSpec, style: Style = "sequential", seed: int = 0, source: bytes | None = None) -> Ready:
        """The spec compiled, its weights initialized from ``seed`` (``compile_spec``'s seeding, as training's), shared
        by every call with the same spec, style and seed."""
        key: Key = ("spec", spec.spec_hash(), style, seed)
        ready = self.cache.get(key)
        if ready is None:
            ready = Ready.of(compile_spec(spec, style, self.device, seed=seed).eval(), self.device)
        return self.cache.put(key, ready, source)

    @staticmethod
    def source_key(source: service_pb2.SpecSource, seed: int) -> bytes:
        """What a request's spec source and seed are remembered by."""
        return seed.to_bytes(8, "little") + source.SerializeToString(deterministic=True)

    def for_source(self, source: service_pb2.SpecSource, seed: int, path: str, check: Callable[[ModelSpec], object] | None = None) -> Ready:
        """``compiled`` for the spec a request sends and its seed, remembered by the source's bytes; ``check`` sees the
        spec first, before anything is compiled (and may refuse it by raising)."""
        key = self.source_key(source, seed)
        ready = self.cache.by_source(key)
        if ready is not None:
            return ready
        spec = request_fields.spec_of(source, path, self._max_params)
        if check is not None:
            check(spec)
        return self.compiled(spec, seed=seed, source=key)

    def stored(self, model_id: str) -> Ready:
        """A stored model with its weights; ``ModelNotFound`` / ``NoWeights`` from the store.

        A cached one is returned only while the store still has its id: replicas share the
        store, not this cache, and another may have deleted it.
        """
        key: Key = ("model", model_id, "", 0)
        ready = self.cache.get(key)
        if ready is not None:
            if self._store.exists(model_id):
                return ready
            self.forget(model_id)
        return self.cache.put(key, Ready.of(self._store.load(model_id, self.device).eval(), self.device))

    def forget(self, model_id: str) -> None:
        """Drop a deleted model, so it cannot be evaluated from the cache."""
        self.cache.drop(("model", model_id, "", 0))
