"""Opt-in shared-memory inputs for a client on the server's host: only the region's name travels.

One POSIX region per client (``specbuilder_<random>``, the only names the server reads), grown
when a batch does not fit and unlinked when the client closes — or, failing that, when it is
garbage-collected or the interpreter exits. Python 3.11 registers a region with the resource
tracker on creation and ``unlink`` unregisters it, so a client that dies unannounced still
leaves nothing behind in ``/dev/shm``; the server unregisters its own attachments.

A lock holds the region from the copy until the server has answered: concurrent shared-memory
calls through one client take turns.
"""

from __future__ import annotations

import secrets
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import shared_memory

import numpy as np

from specbuilder.v1 import tensor_pb2
from specbuilder.wire import WIRE_TYPES

MIN_REGION_BYTES = 1 << 20
"""Smallest region made: small batches never cause a regrow."""


def wire_dtype(array: np.ndarray) -> tuple[int, np.dtype]:
    """The wire dtype code and little-endian numpy dtype for an array's dtype; a TypeError if none fits."""
    for code, wire in WIRE_TYPES.items():
        if wire.numpy is not None and (wire.numpy.kind, wire.numpy.itemsize) == (array.dtype.kind, array.dtype.itemsize):
            return code, wire.numpy
    names = ", ".join(w.name for w in WIRE_TYPES.values() if w.numpy is not None)
    raise TypeError(f"arrays of dtype {array.dtype} cannot travel; use one of {names}")


def _release(region: shared_memory.SharedMemory) -> None:
    region.close()
    region.unlink()


class SharedInputs:
    """The client's one shared-memory region, grown on demand; ``place`` copies a batch into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._region: shared_memory.SharedMemory | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def name(self) -> str | None:
        """The current region's name, None before the first shared-memory call or after ``close``."""
        return self._region.name if self._region is not None else None

    def _fit(self, nbytes: int) -> shared_memory.SharedMemory:
        if self._region is not None and self._region.size >= nbytes:
            return self._region
        self._drop()
        size = max(MIN_REGION_BYTES, 1 << (nbytes - 1).bit_length())
        region = shared_memory.SharedMemory(name=f"specbuilder_{secrets.token_hex(8)}", create=True, size=size)
        self._region, self._finalizer = region, weakref.finalize(self, _release, region)
        return region

    @contextmanager
    def place(self, array: np.ndarray) -> Iterator[tensor_pb2.Tensor]:
        """A wire tensor that points at ``array``'s elements, copied into the region (one copy).

        The region is this call's until the block ends: send the request and read the answer inside it.
        """
        array = np.asarray(array)
        code, dtype = wire_dtype(array)
        with self._lock:
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
        """Unlink the region, waiting for a call that is using it."""
        with self._lock:
            self._drop()


__all__ = ["SharedInputs", "wire_dtype"]
