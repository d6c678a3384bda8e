"""The server lets go of memory: models the caches dropped are freed, and the call pool hands
freed heap back once it falls idle (``specbuilder_server.worker_pool``). The whole server under
pressure is measured in ``tests/reliability/test_exhaustion.py``."""

from __future__ import annotations

import os
import threading
import time
import weakref
from multiprocessing import shared_memory
from pathlib import Path

import torch

from server_helpers import wait_for
from specbuilder.spec import parse_spec
from specbuilder.store import ModelStore
from specbuilder_server.lifecycle import when_idle
from specbuilder_server.model_cache import ModelCache, Models
from specbuilder_server.worker_pool import TrimmingPool
from specbuilder_wire.regions import SharedRegions

QUIET = 0.3
"""Seconds to watch for a trim that must not happen (several idle periods of the pools below)."""


def test_models_the_caches_dropped_are_freed(tmp_path: Path) -> None:
    with ModelStore(tmp_path / "store") as store:
        models = Models(store, torch.device("cpu"), ModelCache(2, 1 << 30), max_params=10**6)
        compiled = []
        for width in range(10, 16):
            ready = models.compiled(parse_spec({"input_shape": [4], "layers": [{"type": "linear", "out_features": width}]}))
            compiled.append(weakref.ref(ready.module))
            del ready
        assert sum(module() is not None for module in compiled) == 2  # freed at once: nothing but the cache held them
        spec = parse_spec({"input_shape": [4], "layers": [{"type": "linear", "out_features": 15}]})
        first, again = models.compiled(spec), models.compiled(spec)
        assert first.module is again.module and first.lock is again.lock  # one module, one lock for every call


def test_the_model_cache_is_bounded_in_bytes_and_keeps_nothing_larger_than_its_budget(tmp_path: Path) -> None:
    def spec(width: int) -> object:
        return parse_spec({"input_shape": [1000], "layers": [{"type": "linear", "out_features": width, "bias": False}]})

    with ModelStore(tmp_path / "store") as store:
        cache = ModelCache(100, 3 * 4000 * 105)  # room for three of the models below (4 bytes x 1000 x width), whatever the count
        models = Models(store, torch.device("cpu"), cache, max_params=10**7)
        kept = [weakref.ref(models.compiled(spec(width)).module) for width in range(100, 106)]  # type: ignore[arg-type]
        assert len(cache) == 3 and cache.nbytes <= cache.max_bytes
        assert [module() is not None for module in kept] == [False] * 3 + [True] * 3  # the least recently used went
        huge = models.compiled(spec(2000))  # type: ignore[arg-type]
        assert huge.module(torch.zeros(1, 1000)).shape == (1, 2000)  # served for its call
        assert cache.get(("spec", huge.spec.spec_hash(), "sequential", 0)) is None and cache.nbytes <= cache.max_bytes


def test_the_pool_trims_once_after_each_busy_spell() -> None:
    trims: list[float] = []
    pool = TrimmingPool(2, lambda: trims.append(time.monotonic()), idle_seconds=0.05)
    try:
        time.sleep(QUIET)
        assert trims == []  # nothing ran: nothing to give back
        release = threading.Event()
        busy = pool.submit(release.wait)
        time.sleep(QUIET)
        assert trims == []  # never while a call is in flight
        release.set()
        busy.result()
        wait_for(lambda: len(trims) == 1, "the trim after the call")
        time.sleep(QUIET)
        assert len(trims) == 1  # once per idle spell, not every idle period
        assert pool.submit(lambda: 42).result() == 42
        wait_for(lambda: len(trims) == 2, "the trim after the next call")
    finally:
        pool.shutdown()


def test_falling_idle_lets_go_of_kept_shared_memory_mappings_before_trimming() -> None:
    region = shared_memory.SharedMemory(name=f"specbuilder_test_{os.getpid()}_idle", create=True, size=4096)
    try:
        regions, done = SharedRegions(), []
        with regions.view(region.name, 0, 16):
            pass
        assert len(regions) == 1
        when_idle(lambda: done.append(len(regions)), regions)()
        assert done == [0]  # the mappings went first, so the trim can give their pages' memory back
        when_idle(None, None)()  # no glibc, no --shared-memory: nothing to do, and no error
    finally:
        region.close()
        region.unlink()
