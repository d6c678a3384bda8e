"""Opt-in shared-memory inputs for a client on the server's host: only the region's name travels.

One POSIX region per client (``specbuilder_wire.regions.new_region``), grown when a batch does
not fit and unlinked when the client closes — or, failing that, when it is garbage-collected or
the interpreter exits. Python 3.11 registers a region with the resource tracker on creation and
``unlink`` unregisters it, so a client that dies unannounced still leaves nothing behind in
``/dev/shm``; the server unregisters its own attachments.

A lock holds the region from the copy until the server has answered: concurrent shared-memory
calls through one client take turns.

A batch placed in that region is copied once; ``array`` hands out arrays that live in regions of
their own instead: a caller that fills one (reads its data straight into it) and evaluates it,
or any contiguous view of it, sends the region's name and the view's offset, nothing copied.
Such a region is mapped by the array itself, so it stays valid as long as any view of it lives,
and is unlinked when the last one is gone, or when the client closes.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import shared_memory

import _posixshmem

import numpy as np
import numpy.typing as npt

from specbuilder_wire.arrays import wire_dtype
from specbuilder_wire.regions import new_region
from specbuilder_wire.v1 import tensor_pb2

MIN_REGION_BYTES = 1 << 20
"""Smallest region made: small batches never cause a regrow."""


def _release(region: shared_memory.SharedMemory) -> None:
    region.close()
    region.unlink()


@dataclass(frozen=True)
class _Owned:
    """A region made by ``SharedInputs.array``: where the array's mapping starts, and its size."""

    name: str
    start: int
    size: int
    unlink: weakref.finalize

    def offset_of(self, array: np.ndarray) -> int | None:
        """Where ``array``'s elements start in this region, if they are all in it, packed; else None."""
        if not array.flags.c_contiguous:
            return None
        first = array.__array_interface__["data"][0]
        offset = first - self.start
        return offset if 0 <= offset and offset + array.nbytes <= self.size else None


def _forget(owned: dict[str, _Owned], region: shared_memory.SharedMemory) -> None:
    """Unlink an array's region: its last view is gone, or the client closes. Takes no lock: it
    may run whenever a view is dropped, in a thread that holds the client's lock already."""
    owned.pop(region.name, None)
    region.unlink()


class SharedInputs:
    """The client's one shared-memory region, grown on demand; ``place`` copies a batch into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._region: shared_memory.SharedMemory | None = None
        self._finalizer: weakref.finalize | None = None
        self._owned: dict[str, _Owned] = {}
        """The regions of ``array``'s arrays still alive, by name."""

    @property
    def name(self) -> str | None:
        """The current region's name, None before the first shared-memory call or after ``close``."""
        return self._region.name if self._region is not None else None

    def _fit(self, nbytes: int) -> shared_memory.SharedMemory:
        if self._region is not None and self._region.size >= nbytes:
            return self._region
        self._drop()
        size = max(MIN_REGION_BYTES, 1 << (nbytes - 1).bit_length())
        region = new_region(size)
        self._region, self._finalizer = region, weakref.finalize(self, _release, region)
        return region

    def array(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        """A zeroed array in a region of its own, which ``place`` sends without copying (see the module's docstring)."""
        _, wire = wire_dtype(np.empty(0, dtype))
        count = math.prod(shape)
        region = new_region(count * wire.itemsize)  # registered with the resource tracker, as the shared region is
        try:
            fd = _posixshmem.shm_open("/" + region.name, os.O_RDWR, mode=0o600)
            try:
                memory = mmap.mmap(fd, region.size)
            finally:
                os.close(fd)
        finally:
            region.close()  # its own mapping: the array keeps the one made here
        start = np.frombuffer(memory, np.uint8).__array_interface__["data"][0]
        with self._lock:
            self._owned[region.name] = _Owned(region.name, start, region.size, weakref.finalize(memory, _forget, self._owned, region))
        return np.frombuffer(memory, wire, count=count).reshape(shape)

    def _owner(self, array: np.ndarray) -> tuple[str, int] | None:
        """The region made by ``array`` (the method) that holds ``array``'s elements packed, and their
        offset in it; None if there is none, and the elements must be copied to be sent."""
        for owned in list(self._owned.values()):
            offset = owned.offset_of(array)
            if offset is not None:
                return owned.name, offset
        return None

    @contextmanager
    def place(self, array: np.ndarray) -> Iterator[tensor_pb2.Tensor]:
        """A wire tensor that points at ``array``'s elements: where they lie if they are in one of
        ``array``'s regions, else copied into the client's region (one copy).

        The call holds the client's lock until the block ends: send the request and read the answer inside it.
        """
        array = np.asarray(array)
        code, dtype = wire_dtype(array)
        with self._lock:
            owner = self._owner(array) if array.dtype == dtype else None
            if owner is not None:
                name, offset = owner
                yield tensor_pb2.Tensor(dtype=code, shape=array.shape, shared_memory=tensor_pb2.SharedMemoryRef(name=name, offset=offset))
                return
            region = self._fit(array.size * dtype.itemsize)
            target = np.ndarray(array.shape, dtype=dtype, buffer=region.buf)
            target[...] = array
            del target  # the region cannot close while a view on it lives
            yield tensor_pb2.Tensor(dtype=code, shape=array.shape, shared_memory=tensor_pb2.SharedMemoryRef(name=region.name))

    def _drop(self) -> None:
        """Unlink the region now; a later ``place`` makes a new one."""
        if self._finalizer is not None:
            self._finalizer()
        self._region = self._finalizer = None

    def close(self) -> None:
        """Unlink the regions, waiting for a call that is using them; arrays already handed out stay
        readable and writable, but can no longer be sent."""
        with self._lock:
            self._drop()
            finalizers = [owned.unlink for owned in list(self._owned.values())]
        for unlink in finalizers:
            unlink()


__all__ = ["SharedInputs"]
