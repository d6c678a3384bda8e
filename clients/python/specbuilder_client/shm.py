"""Opt-in shared-memory inputs for a client on the server's host: only the region's name travels.

One POSIX region per client for Evaluate calls (``specbuilder_wire.regions.new_region``), grown
when a batch does not fit and unlinked when the client closes — or, failing that, when it is
garbage-collected or the interpreter exits. Python 3.11 registers a region with the resource
tracker on creation and ``unlink`` unregisters it, so a client that dies unannounced still leaves
nothing behind in ``/dev/shm``; the server unregisters its own attachments.

A lock holds that region from the copy until the server has answered: concurrent shared-memory
Evaluate calls through one client take turns. A stream borrows a ``Ring`` of regions of its own
instead (``ring``): its batches go into them in turn, each region taken again only once the
answer to the batch it held has come, so a stream's memory is its ring however long it runs.
Rings go back to the client's spares when their stream ends, for the next stream to reuse.

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


class _CopyRegion:
    """A region that batches are copied into, one at a time, grown when one does not fit; unlinked by
    ``drop``, or when garbage-collected."""

    def __init__(self) -> None:
        self._region: shared_memory.SharedMemory | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def name(self) -> str | None:
        return self._region.name if self._region is not None else None

    def copy(self, array: np.ndarray, code: int, dtype: np.dtype) -> tensor_pb2.Tensor:
        """``array`` copied in as ``dtype`` (grown first if it does not fit); the wire tensor that points at it."""
        region = self._fit(array.size * dtype.itemsize)
        target = np.ndarray(array.shape, dtype=dtype, buffer=region.buf)
        target[...] = array
        del target  # the region cannot close while a view on it lives
        return tensor_pb2.Tensor(dtype=code, shape=array.shape, shared_memory=tensor_pb2.SharedMemoryRef(name=region.name))

    def _fit(self, nbytes: int) -> shared_memory.SharedMemory:
        if self._region is not None and self._region.size >= nbytes:
            return self._region
        self.drop()
        size = max(MIN_REGION_BYTES, 1 << (nbytes - 1).bit_length())
        region = new_region(size)
        self._region, self._finalizer = region, weakref.finalize(self, _release, region)
        return region

    def drop(self) -> None:
        """Unlink the region now; the next ``copy`` makes a new one."""
        if self._finalizer is not None:
            self._finalizer()
        self._region = self._finalizer = None


class Ring:
    """One stream's regions, borrowed from the client (``SharedInputs.ring``) until ``release``: a batch goes
    into the slot given, which must not hold a batch the server has yet to answer."""

    def __init__(self, inputs: SharedInputs, regions: list[_CopyRegion]) -> None:
        self._inputs = inputs
        self._regions = regions

    def __len__(self) -> int:
        return len(self._regions)

    def place(self, array: np.ndarray, slot: int) -> tensor_pb2.Tensor:
        """The wire tensor for ``array``: where it lies if it is in one of the client's shared arrays, else copied into ``slot``."""
        return self._inputs.tensor(array, self._regions[slot])

    def release(self) -> None:
        """Give the regions back to the client's spares (unlinked, if the client has closed); once the
        server reads none of them any more. Only the first call does anything."""
        regions, self._regions = self._regions, []
        self._inputs.take_back(regions)


class SharedInputs:
    """The client's shared-memory regions: one that Evaluate's batches are copied into (``place``), the
    spare rings of streams (``ring``) and the regions of arrays handed out (``array``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._copies = _CopyRegion()
        self._spares: list[_CopyRegion] = []
        """Regions of rings whose streams have ended."""
        self._closed = False
        self._owned: dict[str, _Owned] = {}
        """The regions of ``array``'s arrays still alive, by name."""

    @property
    def name(self) -> str | None:
        """The Evaluate region's name, None before the first shared-memory call or after ``close``."""
        return self._copies.name

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
        offset in it; None if there is none, and the elements must be copied to be sent. Takes no lock:
        it reads a snapshot of the regions, and the caller holds ``array``, which keeps its region."""
        for owned in list(self._owned.values()):
            offset = owned.offset_of(array)
            if offset is not None:
                return owned.name, offset
        return None

    def tensor(self, array: np.ndarray, copies: _CopyRegion) -> tensor_pb2.Tensor:
        """A wire tensor that points at ``array``'s elements: where they lie if they are in one of
        ``array``'s regions, else copied into ``copies`` (one copy)."""
        array = np.asarray(array)
        code, dtype = wire_dtype(array)
        owner = self._owner(array) if array.dtype == dtype else None
        if owner is None:
            return copies.copy(array, code, dtype)
        name, offset = owner
        return tensor_pb2.Tensor(dtype=code, shape=array.shape, shared_memory=tensor_pb2.SharedMemoryRef(name=name, offset=offset))

    @contextmanager
    def place(self, array: np.ndarray) -> Iterator[tensor_pb2.Tensor]:
        """``tensor`` for an Evaluate call, copying into the client's Evaluate region.

        The call holds the client's lock until the block ends: send the request and read the answer inside it.
        """
        with self._lock:
            yield self.tensor(array, self._copies)

    def ring(self, size: int) -> Ring:
        """``size`` regions for one stream (spares, or new ones), until ``Ring.release``."""
        with self._lock:
            return Ring(self, [self._spares.pop() if self._spares else _CopyRegion() for _ in range(size)])

    def take_back(self, regions: list[_CopyRegion]) -> None:
        """A ring's regions, back among the spares (unlinked, if the client has closed)."""
        with self._lock:
            if not self._closed:
                self._spares.extend(regions)
                return
        for region in regions:
            region.drop()

    def close(self) -> None:
        """Unlink the regions, waiting for an Evaluate call that is using them (a stream's ring goes when
        the stream ends); arrays already handed out stay readable and writable, but can no longer be sent."""
        with self._lock:
            self._closed = True
            self._copies.drop()
            spares, self._spares = self._spares, []
            finalizers = [owned.unlink for owned in list(self._owned.values())]
        for region in spares:
            region.drop()
        for unlink in finalizers:
            unlink()


__all__ = ["Ring", "SharedInputs"]
