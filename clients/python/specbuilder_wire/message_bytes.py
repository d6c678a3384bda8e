"""A tensor's elements into and out of serialized messages without copying them: protobuf's wire
format by hand, for the one thing protobuf's API cannot do.

A serialized message is a sequence of fields, each a varint tag (field number << 3 | wire type)
and a value; a bytes or sub-message value is a varint length and that many bytes. Parsing the
concatenation of two serialized messages merges them, a sub-message met twice included, and a
singular field met twice keeps the last value (the encoding guide's "last one wins / merge").

A sender writes its request in two parts by that rule (``serialize_with_tensor``): the message
without the tensor's elements, then the tensor field again holding only ``data``, whose payload
is the array's own memory — one copy of the elements in all. A receiver cuts them back out
(``cut_tensor_data``): it parses the small rest with protobuf and reads the elements where they
lie, in the bytes it received, where parsing them with protobuf and reading ``Tensor.data``
would copy them twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np

from specbuilder_wire.arrays import wire_dtype
from specbuilder_wire.v1 import tensor_pb2

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
"""The wire types this module reads (groups, 3 and 4, are long deprecated: left to protobuf)."""
TENSOR_FIELDS = tensor_pb2.Tensor.DESCRIPTOR.fields_by_name
DATA_FIELD = TENSOR_FIELDS["data"].number
SHARED_MEMORY_FIELD = TENSOR_FIELDS["shared_memory"].number
MAX_VARINT_BYTES = 10
T = TypeVar("T")


class Unreadable(ValueError):
    """The bytes are not a well-formed message as far as this reader goes: protobuf decides."""


class TooManyFields(Exception):
    """A cut gave up: the message has more fields than the caller would read (``cut_tensor_data``'s ``max_fields``)."""


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_head(field_number: int, length: int) -> bytes:
    """Tag and length of a length-delimited field holding ``length`` bytes."""
    return varint(field_number << 3 | LENGTH_DELIMITED) + varint(length)


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``buf[pos:end]`` and the position after it."""
    value = shift = 0
    for pos in range(pos, min(end, pos + MAX_VARINT_BYTES)):
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + 1
        shift += 7
    raise Unreadable("a varint runs past its message or over 10 bytes")


def fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Each field of the message in ``buf[start:end]``: (field number, wire type, start of its tag, start of its value, its end).

    A length-delimited value is its bytes without the length; other values as they lie.
    """
    pos = start
    while pos < end:
        tag_at = pos
        tag, pos = _read_varint(buf, pos, end)
        kind = tag & 7
        if kind == VARINT:
            value_at = pos
            _, pos = _read_varint(buf, pos, end)
        elif kind == LENGTH_DELIMITED:
            length, value_at = _read_varint(buf, pos, end)
            pos = value_at + length
        elif kind in (FIXED64, FIXED32):
            value_at = pos
            pos += 8 if kind == FIXED64 else 4
        else:
            raise Unreadable(f"wire type {kind}")
        if pos > end:
            raise Unreadable("a field runs past its message")
        yield tag >> 3, kind, tag_at, value_at, pos


def cut_tensor_data(raw: bytes, tensor_field: int, max_fields: int | None = None) -> tuple[bytes, memoryview | None]:
    """``raw``, a serialized message whose field ``tensor_field`` is a ``Tensor``, split in two:
    the message without the tensor's ``data``, and a read-only view of that ``data`` in ``raw``.

    The cut reads the message's fields one by one in Python, and the tensors' own: ``max_fields``
    bounds how many it reads before it gives up with ``TooManyFields`` (a well-formed request
    has a handful; bytes made to hold millions would take seconds), None reads them all.

    Parsing the first and taking the view as ``data`` reads what parsing ``raw`` would, the last
    ``data`` of the field's occurrences winning. ``raw`` as it is and None when there is no
    ``data`` to cut, when a ``shared_memory`` also occurs (which of the oneof's two is set then
    depends on their order: protobuf decides), or when the bytes do not read as a message
    (protobuf's parse of them then says what is wrong). A field of the right number but the
    wrong wire type is left in the first part, for protobuf to refuse.
    """
    view = memoryview(raw).toreadonly()
    data: memoryview | None = None
    parts: list[bytes | memoryview] = []
    copied_to = 0
    read = [0]
    try:
        for number, kind, tag_at, value_at, end in _counted(fields(raw, 0, len(raw)), read, max_fields):
            if (number, kind) != (tensor_field, LENGTH_DELIMITED):
                continue
            inner: list[bytes | memoryview] = []
            inner_from = value_at
            for inner_number, inner_kind, inner_tag_at, inner_value_at, inner_end in _counted(fields(raw, value_at, end), read, max_fields):
                if inner_number == SHARED_MEMORY_FIELD:
                    return raw, None
                if (inner_number, inner_kind) == (DATA_FIELD, LENGTH_DELIMITED):
                    inner.append(view[inner_from:inner_tag_at])
                    inner_from, data = inner_end, view[inner_value_at:inner_end]
            if not inner:  # no data in this occurrence
                continue
            inner.append(view[inner_from:end])
            rest = b"".join(inner)
            parts += (view[copied_to:tag_at], field_head(tensor_field, len(rest)), rest)
            copied_to = end
    except Unreadable:
        return raw, None
    if data is None:
        return raw, None
    parts.append(view[copied_to:])
    return b"".join(parts), data


def _counted(found: Iterator[T], read: list[int], limit: int | None) -> Iterator[T]:
    """``found``, each item counted in ``read[0]`` (shared by nested reads); ``TooManyFields`` past ``limit`` (None: no limit)."""
    for item in found:
        read[0] += 1
        if limit is not None and read[0] > limit:
            raise TooManyFields(f"more than the {limit} fields a cut may read")
        yield item


def serialize_with_tensor(message: Any, field: str, array: np.ndarray) -> bytes:
    """``message`` serialized with ``array`` as the ``Tensor`` in its field ``field``, the elements copied once.

    Sets the field's dtype and shape on ``message`` (any data it held is cleared); a TypeError
    for a dtype the wire cannot carry, as ``arrays.to_proto`` raises. Parsing the bytes gives
    what ``to_proto(array)`` in that field would.
    """
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


__all__ = ["DATA_FIELD", "TooManyFields", "Unreadable", "cut_tensor_data", "field_head", "fields", "serialize_with_tensor", "varint"]
