"""The shared-memory regions a server reads batches from, kept mapped from one call to the next.

A client on the server's host writes each batch into the same region (``specbuilder_client.shm``)
and sends its name. Mapping it afresh on every call cost the server a ``shm_open``, an ``mmap``
and a page fault per 4 KiB page read, then the ``munmap``: 0.5 ms before the forward and 0.5 ms
after it for the benchmark's 3.2 MB batch, on a 5 ms forward. So a mapping is kept, as the
inference servers that register a client's region once keep theirs, and reused while the name
still opens the same region: every call opens the name and compares the file's identity and
size (a ``shm_open`` and an ``fstat``, microseconds) with the mapping's, so a region unlinked
and made again under the same name is mapped again.

A kept mapping keeps the client's pages alive after the client unlinks the region, so what is
kept is bounded — at most ``max_regions`` mappings and ``max_bytes`` in all, least recently used
dropped first; a region bigger than ``max_bytes`` is mapped for its call only — and the server
drops all of them when it falls idle (``clear``). A mapping dropped while a call still reads it
is unmapped when that call lets go of its view.

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
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

import _posixshmem

MAX_REGIONS = 16
MAX_BYTES = 1 << 30
"""At most 1 GiB of client memory kept mapped between calls."""


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


__all__ = ["RegionDenied", "RegionError", "RegionReader", "SharedRegions"]
