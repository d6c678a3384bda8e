"""A request carrying one large tensor, serialized with a single copy of the tensor's elements.

Protobuf messages may be sent in parts (``specbuilder.wireformat``). So the request is
serialized without the tensor's ``data`` (the small part: spec, options, dtype, shape), and
the bytes of one more field are appended by hand: the tensor field again, holding only
``data``, whose payload is the array's own memory. The ``b"".join`` makes the one copy;
the server reads the elements where they arrive, without copying them either. ``to_proto`` + ``CopyFrom`` + ``SerializeToString`` made four,
each a fresh multi-megabyte buffer that glibc maps and unmaps on every call (DESIGN.md, "How
to measure"): for a 3.2 MB batch on the 2-core box, 12 ms of client CPU and 2,560 page
faults per call, against 0.2 ms and none this way.

Our buffer and gRPC's own copy of it still made glibc trim and refault 6.4 MB per call (1,530
faults, 6.6-8.2 ms of client CPU per Evaluate call). So the first tensor serialized here fixes
the process's malloc thresholds (``specbuilder.heap``) at what glibc reaches by itself once it
has freed a 32 MiB block: allocations up to 32 MiB from the heap, up to 64 MiB of free heap
kept. Then: 2 faults, 2.1-3.3 ms. It is a process-wide setting: a process that sets
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` itself is left as it is.
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
