"""Named POSIX shared-memory regions: how they are named, made (by a client) and read (by a server).

A client on the server's host writes a batch into a region it made (``new_region``, named
``specbuilder_<random>``) and sends only the region's name; a server reads only names that
match ``SHARED_MEMORY_NAME``, so a request can never make it open another program's region.

The server keeps its mappings between calls (``SharedRegions``) and reuses one while the name
still opens the same region: every call opens the name and compares the file's identity and
size with the mapping's, so a region unlinked and made again under the same name is mapped
again. A kept mapping keeps the client's pages alive after the client unlinks the region, so
what is kept is bounded — at most ``max_regions`` mappings and ``max_bytes`` in all, least
recently used dropped first; a region bigger than ``max_bytes`` is mapped for its call only —
and the server drops all of them when it falls idle (``clear``). A mapping dropped while a call
still reads it is unmapped when that call lets go of its view.

A region is read only on behalf of the user who owns it: ``readable_by(uid)`` gives the reader
for a caller whose user is known (the local socket's ``SO_PEERCRED``), which refuses any region
whose owner (``fstat``) is another user before mapping it (``RegionDenied``). Names in
``/dev/shm`` are visible to every user of the host and the server's own rights may reach a
region its caller's do not, so a path that cannot tell who the caller is reads none, unless the
operator trusts every caller with the server's rights (``SharedRegions`` itself, for a
single-tenant host).
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Protocol

import _posixshmem

SHARED_MEMORY_NAME = re.compile(r"specbuilder_[A-Za-z0-9_-]{1,64}")
"""The names of the regions a server reads: only ones made for specbuilder."""
MAX_REGIONS = 16
MAX_BYTES = 1 << 30
"""At most 1 GiB of client memory kept mapped between calls."""


def new_region(nbytes: int) -> shared_memory.SharedMemory:
    """A new region of ``nbytes`` bytes (at least 1) under a fresh name a server reads (``specbuilder_`` and 16 hex digits).

    The caller owns it: Python's resource tracker unlinks it if the process dies before ``unlink``.
    """
    return shared_memory.SharedMemory(name=f"specbuilder_{secrets.token_hex(8)}", create=True, size=max(nbytes, 1))


class RegionError(ValueError):
    """A region that cannot be read: not there (``field`` "name"), or smaller than the tensor it should hold."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class RegionDenied(RegionError):
    """A region the caller may not have read: another user's."""


class RegionReader(Protocol):
    """Where a call's shared-memory tensors are read from."""

    def view(self, name: str, offset: int, nbytes: int) -> AbstractContextManager[memoryview]:
        """A read-only view of ``nbytes`` at ``offset`` in region ``name``, valid until the block ends."""
        ...


@dataclass(frozen=True)
class _Mapping:
    identity: tuple[int, int, int]
    """The region's device, inode and size when it was mapped."""
    memory: mmap.mmap


class SharedRegions:
    """Read-only mappings of named POSIX shared-memory regions, kept between calls (see the module's docstring)."""

    def __init__(self, max_regions: int = MAX_REGIONS, max_bytes: int = MAX_BYTES) -> None:
        self._max_regions = max_regions
        self._max_bytes = max_bytes
        self._kept: OrderedDict[str, _Mapping] = OrderedDict()
        self._lock = threading.Lock()

    def _mapping(self, name: str, owner: int | None) -> _Mapping:
        """The current mapping of region ``name``: the kept one if the name still opens that region;
        ``RegionDenied`` unless user ``owner`` owns it (None: any owner)."""
        try:
            fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, mode=0o600)
        except FileNotFoundError:
            raise RegionError(f"no shared-memory region named {name!r} on this host", "name") from None
        try:
            stat = os.fstat(fd)
            if owner is not None and stat.st_uid != owner:
                raise RegionDenied(f"the shared-memory region {name!r} belongs to another user than the caller's; "
                                   "a caller may send only regions its own user created", "name")
            identity = (stat.st_dev, stat.st_ino, stat.st_size)
            with self._lock:
                kept = self._kept.get(name)
                if kept is not None and kept.identity == identity:
                    self._kept.move_to_end(name)
                    return kept
            if not stat.st_size:
                raise RegionError(f"the shared-memory region {name!r} is empty", "name")
            mapping = _Mapping(identity, mmap.mmap(fd, stat.st_size, access=mmap.ACCESS_READ))
        finally:
            os.close(fd)
        with self._lock:
            self._kept.pop(name, None)
            if stat.st_size <= self._max_bytes:
                self._kept[name] = mapping
            while len(self._kept) > self._max_regions or sum(m.identity[2] for m in self._kept.values()) > self._max_bytes:
                self._kept.popitem(last=False)
        return mapping

    def view(self, name: str, offset: int, nbytes: int) -> AbstractContextManager[memoryview]:
        """A read-only view of ``nbytes`` bytes at ``offset`` in region ``name``, whoever owns it, valid until the block ends."""
        return self._view(name, offset, nbytes, None)

    def readable_by(self, uid: int) -> RegionReader:
        """The reader for a caller running as user ``uid``: only regions that user owns."""
        return _Owned(self, uid)

    @contextmanager
    def _view(self, name: str, offset: int, nbytes: int, owner: int | None) -> Iterator[memoryview]:
        mapping = self._mapping(name, owner)
        size = mapping.identity[2]
        if offset + nbytes > size:
            raise RegionError(f"offset {offset} + {nbytes} bytes runs past the region's {size} bytes")
        whole = memoryview(mapping.memory)
        view = whole[offset : offset + nbytes]
        try:
            yield view
        finally:
            view.release()
            whole.release()

    def clear(self) -> None:
        """Drop every kept mapping (those in use go when their call ends)."""
        with self._lock:
            self._kept.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)


@dataclass(frozen=True)
class _Owned:
    regions: SharedRegions
    uid: int

    def view(self, name: str, offset: int, nbytes: int) -> AbstractContextManager[memoryview]:
        return self.regions._view(name, offset, nbytes, self.uid)


__all__ = ["SHARED_MEMORY_NAME", "RegionDenied", "RegionError", "RegionReader", "SharedRegions", "new_region"]
