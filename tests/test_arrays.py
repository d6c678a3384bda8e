"""numpy arrays to and from ``Tensor`` messages (``specbuilder_wire.arrays``), inline and in shared memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specbuilder_wire.arrays import WIRE_TYPES, TensorError, copy_to_numpy, to_numpy, to_proto
from specbuilder_wire.regions import SharedRegions, new_region
from specbuilder_wire.v1 import tensor_pb2

VALUES = [-2.5, 0.0, 1.0, 3.140625, 65280.0, -1e-3]
"""Values bfloat16 holds exactly, or nearly (its 8-bit mantissa rounds the last)."""


def bfloat16_tensor(values: list[float]) -> tuple[tensor_pb2.Tensor, np.ndarray]:
    """A bfloat16 wire tensor of ``values`` (made by torch, which has the type) and the float32 values it holds."""
    halves = torch.tensor(values, dtype=torch.bfloat16)
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_BFLOAT16, shape=[2, 3], data=halves.view(torch.int16).numpy().tobytes())
    return tensor, halves.float().numpy().reshape(2, 3)


def test_torch_names_every_wire_dtype_as_the_wire_does() -> None:
    assert all(isinstance(getattr(torch, wire.name), torch.dtype) for wire in WIRE_TYPES.values())


def test_bfloat16_widens_to_the_float32_values_it_holds() -> None:
    tensor, expected = bfloat16_tensor(VALUES)
    np.testing.assert_array_equal(to_numpy(tensor), expected)
    copied = copy_to_numpy(tensor, "x", regions=None)
    np.testing.assert_array_equal(copied, expected)
    assert copied.dtype == np.float32


def test_a_copy_is_writable_and_a_view_is_not() -> None:
    tensor = to_proto(np.arange(6, dtype=np.int32).reshape(2, 3))
    view, copy = to_numpy(tensor), copy_to_numpy(tensor, "x", regions=None)
    assert not view.flags.writeable and copy.flags.writeable
    copy[0, 0] = 7
    np.testing.assert_array_equal(to_numpy(tensor), np.arange(6).reshape(2, 3))


def test_a_shared_memory_tensor_is_copied_out_of_its_region_and_refused_without_regions() -> None:
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    region = new_region(x.nbytes + 16)
    try:
        np.ndarray(x.shape, np.float32, buffer=region.buf, offset=16)[...] = x
        tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[3, 4],
                                   shared_memory=tensor_pb2.SharedMemoryRef(name=region.name, offset=16))
        regions = SharedRegions()
        np.testing.assert_array_equal(copy_to_numpy(tensor, "arrays.x", regions=regions), x)
        regions.clear()
        with pytest.raises(TensorError, match=r"^arrays\.x\.shared_memory: this server does not accept shared-memory tensors"):
            copy_to_numpy(tensor, "arrays.x", regions=None)
    finally:
        region.close()
        region.unlink()
