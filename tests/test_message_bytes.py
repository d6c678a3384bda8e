"""A tensor's elements in serialized messages, without copies (``specbuilder_wire.message_bytes``).

``serialize_with_tensor``: the hand-appended tensor parses to the same message ``to_proto`` builds.
``cut_tensor_data``: the message without the batch's elements, plus a view of them, reads as protobuf reads the whole.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from google.protobuf.message import DecodeError

from specbuilder_wire.arrays import payload, to_proto
from specbuilder_wire.message_bytes import cut_tensor_data, field_head, serialize_with_tensor, varint
from specbuilder_wire.v1 import service_pb2, tensor_pb2

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


INPUT = service_pb2.EvaluateRequest.DESCRIPTOR.fields_by_name["input"].number
BATCH = service_pb2.StreamEvaluateRequest.DESCRIPTOR.fields_by_name["batch"].number


def read(raw: bytes, message_type: type, field: int, name: str) -> tuple[object, bytes | None]:
    """What the server reads: the message parsed from the cut bytes, and the tensor's elements."""
    rest, data = cut_tensor_data(raw, field)
    message = message_type.FromString(rest)
    if data is None:
        return message, None
    assert getattr(message, name).WhichOneof("payload") is None  # the elements were taken out, not parsed
    return message, bytes(data)


def test_a_serialized_tensor_is_cut_back_without_a_copy() -> None:
    x = np.random.default_rng(0).standard_normal((64, 784), dtype=np.float32)
    request = service_pb2.EvaluateRequest(model_id="m", options=service_pb2.EvaluateOptions(statistics=True))
    raw = serialize_with_tensor(request, "input", x)
    rest, data = cut_tensor_data(raw, INPUT)
    assert data is not None and data.obj is raw and data.readonly  # a view of the received bytes themselves
    assert len(rest) < 100
    message = service_pb2.EvaluateRequest.FromString(rest)
    assert message.model_id == "m" and message.options.statistics and list(message.input.shape) == [64, 784]
    np.testing.assert_array_equal(np.frombuffer(data, np.float32).reshape(64, 784), x)


def test_a_stream_batch_is_cut_like_an_evaluate_input() -> None:
    raw = serialize_with_tensor(service_pb2.StreamEvaluateRequest(), "batch", np.ones((3, 2), np.float32))
    message, data = read(raw, service_pb2.StreamEvaluateRequest, BATCH, "batch")
    assert message.WhichOneof("item") == "batch"
    np.testing.assert_array_equal(np.frombuffer(payload(message.batch, "batch", memoryview(data))[2], np.float32), np.ones(6))


def tensor_bytes(array: np.ndarray) -> bytes:
    return to_proto(array).SerializeToString()


ARRAYS = st.builds(lambda rows, cols: np.arange(rows * cols, dtype=np.float32).reshape(rows, cols), st.integers(0, 5), st.integers(1, 40))
PIECES = st.one_of(
    ARRAYS.map(lambda a: ("input", tensor_bytes(a))),  # a whole tensor
    ARRAYS.map(lambda a: ("input", field_head(3, len(a.tobytes())) + a.tobytes())),  # data alone
    st.just(("input", b"")),  # an empty occurrence
    st.text(max_size=20).map(lambda s: ("model_id", s.encode())),
    st.booleans().map(lambda b: ("options", service_pb2.EvaluateOptions(statistics=b, bins=7).SerializeToString())),
)


@given(st.lists(PIECES, max_size=6))
def test_any_sequence_of_occurrences_reads_as_protobuf_reads_it(pieces: list[tuple[str, bytes]]) -> None:
    numbers = service_pb2.EvaluateRequest.DESCRIPTOR.fields_by_name
    raw = b"".join(field_head(numbers[name].number, len(body)) + body for name, body in pieces)
    whole = service_pb2.EvaluateRequest.FromString(raw)
    message, data = read(raw, service_pb2.EvaluateRequest, INPUT, "input")
    if whole.input.WhichOneof("payload") == "data":
        assert data == whole.input.data  # the last data of all the occurrences wins, as in protobuf
    else:
        assert data is None
    message.input.ClearField("data")
    whole.input.ClearField("data")
    assert message == whole


@given(st.binary(max_size=64))
def test_bytes_that_are_no_message_are_left_for_protobuf_to_judge(raw: bytes) -> None:
    rest, data = cut_tensor_data(raw, INPUT)
    if data is None:
        assert rest is raw
        return
    try:
        whole = service_pb2.EvaluateRequest.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            service_pb2.EvaluateRequest.FromString(rest)
        return
    message = service_pb2.EvaluateRequest.FromString(rest)
    assert bytes(data) == whole.input.data
    whole.input.ClearField("data")
    assert message == whole


@pytest.mark.parametrize("raw", [
    field_head(INPUT, 3) + b"\x1a\x05ab",  # data's length runs past the tensor
    b"\x1a" + b"\xff" * 11,  # a varint over 10 bytes
    field_head(INPUT, 2) + b"\x1b\x00",  # a group start (wire type 3) in the tensor
], ids=["length past the end", "long varint", "group"])
def test_malformed_framing_is_not_cut(raw: bytes) -> None:
    assert cut_tensor_data(raw, INPUT) == (raw, None)


def test_a_shared_memory_reference_is_left_to_protobuf() -> None:
    """With both oneof members present, which one is set depends on their order: protobuf decides."""
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[1], shared_memory=tensor_pb2.SharedMemoryRef(name="specbuilder_x"))
    raw = service_pb2.EvaluateRequest(input=tensor).SerializeToString() + field_head(INPUT, 6) + field_head(3, 4) + bytes(4)
    assert cut_tensor_data(raw, INPUT) == (raw, None)


@pytest.mark.parametrize("value", [1, 127, 128, 300, 2**32, 2**63 - 1])
def test_varints_encode_as_protobuf_does(value: int) -> None:
    assert service_pb2.StreamSummary(batches=value).SerializeToString() == b"\x08" + varint(value)
