"""A request carrying one large tensor, serialized with a single copy of the tensor's elements.

Protobuf messages may be sent in parts (``specbuilder.wireformat``). So the request is
serialized without the tensor's ``data`` (the small part: spec, options, dtype, shape), and
the bytes of one more field are appended by hand: the tensor field again, holding only
``data``, whose payload is the array's own memory. The ``b"".join`` makes the one copy;
the server reads the elements where they arrive, without copying them either (``to_proto`` +
``CopyFrom`` + ``SerializeToString`` would make four, each a fresh multi-megabyte buffer).

So that this buffer and gRPC's own copy of it are reused rather than mapped and unmapped on
every call, the first tensor serialized here fixes the process's malloc thresholds
(``specbuilder.heap``) at what glibc reaches by itself once it has freed a 32 MiB block:
allocations up to 32 MiB from the heap, up to 64 MiB of free heap kept. It is a process-wide
setting: a process that sets ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` itself is
left as it is. docs/benchmarks.md has the measurements behind both choices.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from specbuilder.heap import MMAP_THRESHOLD_MAX, set_thresholds
from specbuilder.wireformat import DATA_FIELD, field_head
from specbuilder_client.shm import wire_dtype


@cache
def _keep_large_buffers() -> bool:
    """Set this process's malloc thresholds once (see the module's docstring)."""
    return set_thresholds(MMAP_THRESHOLD_MAX, 2 * MMAP_THRESHOLD_MAX)


def serialize_with_tensor(message: Any, field: str, array: np.ndarray) -> bytes:
    """``message`` serialized with ``array`` as the ``Tensor`` in its field ``field``.

    Sets the field's dtype and shape on ``message`` (any data it held is cleared); a TypeError
    for a dtype the wire cannot carry, as ``to_proto`` raises.
    """
    _keep_large_buffers()
    array = np.asarray(array)
    code, dtype = wire_dtype(array)
    elements = memoryview(np.ascontiguousarray(array, dtype=dtype).reshape(-1).view(np.uint8))
    tensor = getattr(message, field)
    tensor.Clear()
    tensor.dtype = code
    tensor.shape.extend(array.shape)
    inner = field_head(DATA_FIELD, elements.nbytes)
    outer = field_head(message.DESCRIPTOR.fields_by_name[field].number, len(inner) + elements.nbytes)
    return b"".join((message.SerializeToString(), outer, inner, elements))


__all__ = ["serialize_with_tensor"]
