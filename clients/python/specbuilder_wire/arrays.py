"""numpy arrays to and from ``Tensor`` messages (``specbuilder.v1.Tensor``), and the one table of wire dtypes.

Shared by the server and the client: raw little-endian row-major bytes, checked against the
dtype and shape before anything reads them, with errors that name the field. The opt-in
shared-memory path reads the same layout from a named POSIX region on the same host
(``regions``). Torch's side (``torch.frombuffer`` over these bytes) lives with torch, in the
server, and takes its dtypes from ``WIRE_TYPES``.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from specbuilder_wire.regions import SHARED_MEMORY_NAME, RegionDenied, RegionError, RegionReader
from specbuilder_wire.v1 import tensor_pb2

DType = tensor_pb2.DType


@dataclass(frozen=True)
class WireType:
    """One dtype on the wire: its name (torch's too: ``torch.float32``), its numpy dtype (None where numpy has none) and size."""

    name: str
    numpy: np.dtype | None
    itemsize: int


WIRE_TYPES: dict[int, WireType] = {
    DType.DTYPE_FLOAT32: WireType("float32", np.dtype("<f4"), 4),
    DType.DTYPE_FLOAT64: WireType("float64", np.dtype("<f8"), 8),
    DType.DTYPE_FLOAT16: WireType("float16", np.dtype("<f2"), 2),
    DType.DTYPE_BFLOAT16: WireType("bfloat16", None, 2),
    DType.DTYPE_INT64: WireType("int64", np.dtype("<i8"), 8),
    DType.DTYPE_INT32: WireType("int32", np.dtype("<i4"), 4),
    DType.DTYPE_BOOL: WireType("bool", np.dtype("?"), 1),
}
"""Every dtype the wire carries, by enum value."""
_BY_KIND = {(wire.numpy.kind, wire.itemsize): (code, wire.numpy) for code, wire in WIRE_TYPES.items() if wire.numpy is not None}
MAX_DIMS = 8
MAX_ELEMENTS = 2**60
"""Sizes (zeros aside) may multiply to at most this: any more, in 8-byte elements, overflows the 64-bit byte counts numpy and torch use."""


class TensorError(ValueError):
    """A tensor on the wire is malformed; ``path`` names the field (``input.shape``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class TensorDenied(TensorError):
    """A shared-memory tensor the caller may not have read (``regions.RegionDenied``)."""


def wire_dtype(array: np.ndarray) -> tuple[int, np.dtype]:
    """The wire dtype code of an array's dtype and the little-endian numpy dtype it travels as; a TypeError if none fits."""
    found = _BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if found is None:
        names = ", ".join(w.name for w in WIRE_TYPES.values() if w.numpy is not None)
        raise TypeError(f"arrays of dtype {array.dtype} cannot travel; use one of {names}")
    return found


def to_proto(array: np.ndarray) -> tensor_pb2.Tensor:
    """A numpy array as a wire tensor (one copy, into the message's bytes)."""
    array = np.asarray(array)
    code, dtype = wire_dtype(array)
    return tensor_pb2.Tensor(dtype=code, shape=array.shape, data=np.ascontiguousarray(array, dtype=dtype).tobytes())


def wire_type(tensor: tensor_pb2.Tensor, path: str) -> WireType:
    """The tensor's dtype, checked."""
    wire = WIRE_TYPES.get(tensor.dtype)
    if wire is None:
        raise TensorError(f"{path}.dtype", f"unknown or unset dtype ({tensor.dtype}); use one of {', '.join(w.name for w in WIRE_TYPES.values())}")
    return wire


def check_shape(tensor: tensor_pb2.Tensor, path: str) -> tuple[int, ...]:
    """The tensor's shape, checked: at most 8 dims, none negative, not beyond what an array can hold (even an empty one)."""
    shape = tuple(tensor.shape)
    if len(shape) > MAX_DIMS:
        raise TensorError(f"{path}.shape", f"has {len(shape)} dimensions, at most {MAX_DIMS} allowed")
    if any(size < 0 for size in shape):
        raise TensorError(f"{path}.shape", f"sizes must be >= 0, got {list(shape)}")
    if math.prod(max(size, 1) for size in shape) > MAX_ELEMENTS:
        raise TensorError(f"{path}.shape", f"sizes (zeros aside) must multiply to at most 2**60, got {list(shape)}")
    return shape


def payload(tensor: tensor_pb2.Tensor, path: str, data: memoryview | None = None) -> tuple[WireType, tuple[int, ...], memoryview]:
    """The checked dtype, shape and a read-only view of the inline elements.

    ``data`` is the elements when they were cut out of the request's bytes unparsed
    (``message_bytes.cut_tensor_data``: no copy); otherwise they are ``tensor.data``,
    which protobuf copies on every read. Shared-memory tensors are read through ``attached``,
    which bounds the view's lifetime.
    """
    wire, shape = wire_type(tensor, path), check_shape(tensor, path)
    if data is None:
        if tensor.WhichOneof("payload") == "shared_memory":
            raise TensorError(f"{path}.shared_memory", "shared-memory tensors need the attached() context")
        data = memoryview(tensor.data)
    _check_length(len(data), wire, shape, path)
    return wire, shape, data


def _check_length(length: int, wire: WireType, shape: tuple[int, ...], path: str) -> None:
    expected = math.prod(shape) * wire.itemsize
    if length != expected:
        raise TensorError(
            f"{path}.data",
            f"has {length} bytes, but shape {list(shape)} of {wire.name} needs {expected}",
        )


@contextmanager
def attached(
    tensor: tensor_pb2.Tensor, path: str, *, regions: RegionReader | None, data: memoryview | None = None,
) -> Iterator[tuple[WireType, tuple[int, ...], memoryview]]:
    """Like ``payload``, also for shared-memory tensors, read through ``regions`` (None: refused);
    the view lives until the block ends."""
    if data is not None or tensor.WhichOneof("payload") != "shared_memory":
        yield payload(tensor, path, data)
        return
    wire, shape = wire_type(tensor, path), check_shape(tensor, path)
    ref = tensor.shared_memory
    if regions is None:
        raise TensorError(f"{path}.shared_memory", "this server does not accept shared-memory tensors (start it with --shared-memory)")
    if not SHARED_MEMORY_NAME.fullmatch(ref.name):
        raise TensorError(f"{path}.shared_memory.name", f"must match {SHARED_MEMORY_NAME.pattern}, got {ref.name!r}")
    with ExitStack() as stack:
        try:
            view = stack.enter_context(regions.view(ref.name, ref.offset, math.prod(shape) * wire.itemsize))
        except RegionDenied as error:
            raise TensorDenied(f"{path}.shared_memory.name", str(error)) from None
        except RegionError as error:
            raise TensorError(".".join(filter(None, (path, "shared_memory", error.field))), str(error)) from None
        yield wire, shape, view


def _array(wire: WireType, shape: tuple[int, ...], data: memoryview) -> np.ndarray:
    """The elements as an array: a view on ``data``, or for bfloat16 a new float32 array (the same values)."""
    if wire.numpy is None:
        halves = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return halves.view(np.float32).reshape(shape)
    return np.frombuffer(data, dtype=wire.numpy).reshape(shape)


def to_numpy(tensor: tensor_pb2.Tensor, path: str = "tensor") -> np.ndarray:
    """A wire tensor as a numpy array (a read-only view on the message's bytes; bfloat16 widens to float32)."""
    return _array(*payload(tensor, path))


def copy_to_numpy(tensor: tensor_pb2.Tensor, path: str, *, regions: RegionReader | None) -> np.ndarray:
    """A writable copy of the tensor as a numpy array, for data kept past the call: inline or in
    shared memory (read through ``regions``, as ``attached``); bfloat16 widens to float32."""
    with attached(tensor, path, regions=regions) as (wire, shape, view):
        return np.array(_array(wire, shape, view))  # no name holds the view's array: the region can close
