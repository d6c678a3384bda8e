"""``serialize_with_tensor``: the hand-appended tensor parses to the same message ``to_proto`` builds."""

from __future__ import annotations

import numpy as np
import pytest

from specbuilder_wire.v1 import service_pb2
from specbuilder.wire import to_proto
from specbuilder_client.framing import serialize_with_tensor

ARRAYS = {
    "float32 batch": np.random.default_rng(0).standard_normal((3, 4), dtype=np.float32),
    "empty batch": np.zeros((0, 784), np.float32),
    "strided int64": np.arange(6).reshape(2, 3)[:, ::2],
    "transposed float64": np.random.default_rng(1).random((200, 300)).T,
    "big-endian float32": np.ones((2, 2), ">f4"),
    "bool scalar": np.array(True),
    "float16 over 128 bytes": np.ones(100, np.float16),
}


@pytest.mark.parametrize("array", ARRAYS.values(), ids=ARRAYS.keys())
def test_the_appended_tensor_parses_like_to_proto(array: np.ndarray) -> None:
    request = service_pb2.EvaluateRequest(model_id="m", options=service_pb2.EvaluateOptions(statistics=True))
    expected = service_pb2.EvaluateRequest()
    expected.CopyFrom(request)
    expected.input.CopyFrom(to_proto(array))
    assert service_pb2.EvaluateRequest.FromString(serialize_with_tensor(request, "input", array)) == expected


def test_a_stream_batch_and_a_tensor_that_held_data_before() -> None:
    request = service_pb2.StreamEvaluateRequest()
    request.batch.CopyFrom(to_proto(np.zeros((9, 9), np.float64)))
    parsed = service_pb2.StreamEvaluateRequest.FromString(serialize_with_tensor(request, "batch", np.ones((5, 2), np.float32)))
    assert parsed.batch == to_proto(np.ones((5, 2), np.float32))


def test_a_dtype_the_wire_cannot_carry_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="arrays of dtype <U1 cannot travel"):
        serialize_with_tensor(service_pb2.EvaluateRequest(), "input", np.array(["a"]))
