"""Hostile bytes against a real server in a subprocess: every one gets a proper status, nothing crashes.

Raw bytes go to every ModelService RPC through untyped multi-callables (no client-side parsing):
random bytes, valid requests mutated (bits flipped, cut short, junk appended, bytes inserted or
dropped), every truncation of each valid request, protobuf nested 100 000 levels deep, and a
message past the size limit. Tensors lie about themselves (negative or overflowing shapes, byte
counts that do not match, unknown dtypes, empty and shared-memory payloads) to Evaluate,
StreamEvaluate and Train. NaN and infinities are evaluated, and the statistics count every one.
Each answer must be OK or a client-side status (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED,
FAILED_PRECONDITION): never UNKNOWN, INTERNAL or a missed deadline; and afterwards the server
process (``hostile_server``) is alive and SERVING.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from server_helpers import SPIRALS, answer, batch, config_values, open_channel, spec_source
from specbuilder.demo.server import ServerProcess
from specbuilder_server.errors import MAX_MESSAGE_BYTES
from specbuilder_wire.v1 import service_pb2 as pb
from specbuilder_wire.v1 import tensor_pb2
from specbuilder_wire.v1.service_pb2_grpc import ModelServiceStub as Stub

DEADLINE = 60.0
"""Seconds any one call may take: far more than an answer needs on a busy machine, far less than a hang."""
PROPER = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION"}
"""What any bytes may get: an answer, or a status that blames the request."""
SERVICE = pb.DESCRIPTOR.services_by_name["ModelService"]
METHODS = list(SERVICE.methods)
PROFILE = settings.get_profile("soak" if settings.get_current_profile_name() == "soak" else "short")
"""The suite's hypothesis profile: soak under --soak, else short (tests/conftest.py loads only soak)."""
GENEROUS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example, HealthCheck.function_scoped_fixture]
"""Hypothesis health checks these tests do not need: examples are slow RPCs, and `tally` is meant to gather across examples."""
X = np.random.default_rng(0).standard_normal((16, 2)).astype(np.float32)
Y = (np.arange(16) % 2).astype(np.int64)
IDENTITY = {"name": "identity", "input_shape": [4], "layers": [{"type": "identity"}]}
"""A model whose one monitored module outputs its input: its statistics are the input's own."""


# -- raw calls ----------------------------------------------------------------------------------


def raw_call(channel: grpc.Channel, method: descriptor.MethodDescriptor, messages: list[bytes]) -> tuple[str, str]:
    """Send serialized ``messages`` (one, or a stream) as they are; the status name and message.

    A Train whose bytes happen to make a valid run is cancelled once it has started: that it
    started is the answer.
    """
    path = f"/{SERVICE.full_name}/{method.name}"
    try:
        if method.client_streaming:
            call: Any = channel.stream_stream(path)(iter(messages), timeout=DEADLINE)
        elif method.server_streaming:
            call = channel.unary_stream(path)(messages[0], timeout=DEADLINE)
        else:
            channel.unary_unary(path)(messages[0], timeout=DEADLINE)
            return "OK", ""
        for data in call:
            if method.name == "Train" and pb.TrainEvent.FromString(data).HasField("started"):
                call.cancel()
                return "OK", "started"
    except grpc.RpcError as error:
        return error.code().name, error.details() or ""
    return "OK", ""


def check(tally: Any, kind: str, code: str, message: str) -> None:
    tally.count(kind, code)
    assert code in PROPER, f"{kind}: {code} {message[:500]}"
    assert "Traceback" not in message and len(message.encode()) <= MAX_MESSAGE_BYTES, f"{kind}: {message[:500]}"


@pytest.fixture(scope="module")
def channel(hostile_server: ServerProcess) -> Iterator[grpc.Channel]:
    with open_channel(hostile_server.address) as opened:
        yield opened


@pytest.fixture(scope="module")
def valid(hostile: Stub) -> dict[str, list[bytes]]:
    """A valid serialized request (a list of messages for a stream) for every RPC; ids name a stored model."""
    events = list(hostile.Train(pb.TrainRequest(spec=spec_source(SPIRALS), arrays=pb.TrainArrays(x=batch(X), y=batch(Y)),
                                                config=config_values({"epochs": 1, "batch_size": 8})), timeout=DEADLINE))
    model_id, spec = events[-1].run_id, spec_source(SPIRALS)
    start = pb.StreamEvaluateRequest(start=pb.StreamEvaluateStart(spec=spec, options=pb.EvaluateOptions(statistics=True)))
    requests: dict[str, list[Any]] = {
        "ValidateSpec": [pb.ValidateSpecRequest(spec=spec)],
        "CompileSpec": [pb.CompileSpecRequest(spec=spec, style="functional", include_code=True)],
        "Evaluate": [pb.EvaluateRequest(spec=spec, input=batch(X[:4]), options=pb.EvaluateOptions(statistics=True, all_layers=True))],
        "StreamEvaluate": [start, pb.StreamEvaluateRequest(batch=batch(X[:4])), pb.StreamEvaluateRequest(batch=batch(X[4:8]))],
        "Train": [pb.TrainRequest(spec=spec, arrays=pb.TrainArrays(x=batch(X), y=batch(Y)), config=config_values({"epochs": 1, "batch_size": 8}))],
        "ListModels": [pb.ListModelsRequest(status=pb.RUN_STATUS_COMPLETED)],
        "GetModel": [pb.GetModelRequest(model_id=model_id)],
        "DeleteModel": [pb.DeleteModelRequest(model_id=model_id)],
        "ExportModel": [pb.ExportModelRequest(model_id=model_id)],
        "ListActivations": [pb.ListActivationsRequest()],
        "ListLayers": [pb.ListLayersRequest()],
        "ListDatasets": [pb.ListDatasetsRequest()],
        "GetSchema": [pb.GetSchemaRequest()],
    }
    assert set(requests) == {method.name for method in METHODS}, "every RPC needs a valid request here"
    return {name: [message.SerializeToString() for message in messages] for name, messages in requests.items()}


def assert_alive_and_serving(server: ServerProcess) -> None:
    assert server.process.poll() is None, "the server process died"
    with open_channel(server.address) as opened:
        health = health_pb2_grpc.HealthStub(opened)
        for service in ("", SERVICE.full_name):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE).status == health_pb2.HealthCheckResponse.SERVING


# -- random and mutated bytes -------------------------------------------------------------------

methods = st.sampled_from(METHODS)


@settings(PROFILE, suppress_health_check=GENEROUS)
@given(method=methods, data=st.lists(st.binary(max_size=300), min_size=1, max_size=3))
def test_random_bytes_get_proper_answers_from_every_rpc(channel: grpc.Channel, tally: Any, method: descriptor.MethodDescriptor, data: list[bytes]) -> None:
    check(tally, f"random bytes · {method.name}", *raw_call(channel, method, data if method.client_streaming else data[:1]))


def flip_bits(data: bytes, positions: list[int]) -> bytes:
    out = bytearray(data)
    for position in positions:
        if out:
            out[position % len(out)] ^= 1 << (position % 8)
    return bytes(out)


MUTATIONS: dict[str, Callable[[bytes, int, bytes], bytes]] = {
    "bits flipped": lambda data, where, junk: flip_bits(data, [where, where * 7 + 3, where * 13 + 5][: 1 + where % 3]),
    "cut short": lambda data, where, junk: data[: where % max(len(data), 1)],
    "junk appended": lambda data, where, junk: data + junk,
    "bytes inserted": lambda data, where, junk: data[: where % (len(data) + 1)] + junk + data[where % (len(data) + 1):],
    "bytes dropped": lambda data, where, junk: data[: where % (len(data) + 1)] + data[where % (len(data) + 1) + len(junk):],
    "byte set to 0xff": lambda data, where, junk: data[: where % (len(data) + 1)] + b"\xff" + data[where % (len(data) + 1) + 1:],
}
"""Ways to damage a serialized request at position ``where`` (``junk``: bytes to add, or how many to drop)."""


@settings(PROFILE, suppress_health_check=GENEROUS)
@given(method=methods, mutation=st.sampled_from(sorted(MUTATIONS)), which=st.integers(0, 2), where=st.integers(0, 10**6),
       junk=st.binary(min_size=1, max_size=16))
def test_mutated_requests_get_proper_answers_from_every_rpc(channel: grpc.Channel, valid: dict[str, list[bytes]], tally: Any,
                                                            method: descriptor.MethodDescriptor, mutation: str, which: int, where: int, junk: bytes) -> None:
    messages = list(valid[method.name])
    index = which % len(messages)
    messages[index] = MUTATIONS[mutation](messages[index], where, junk)
    check(tally, f"{mutation} · {method.name}", *raw_call(channel, method, messages))


def test_every_truncation_of_every_request_gets_a_proper_answer(channel: grpc.Channel, valid: dict[str, list[bytes]], tally: Any, budget: Any) -> None:
    """Each valid request cut at every length (soak), or at lengths spread through it (short)."""
    for method in METHODS:
        messages = valid[method.name]
        for index, message in enumerate(messages):
            lengths = range(len(message)) if budget.soak else sorted({*range(0, len(message), max(len(message) // 24, 1)), len(message) - 1})
            for length in lengths:
                cut = [*messages[:index], message[:length], *messages[index + 1:]]
                check(tally, f"truncated · {method.name}", *raw_call(channel, method, cut))


def varint(n: int) -> bytes:
    """``n`` as a protobuf varint."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(tag: int, data: bytes) -> bytes:
    """A length-delimited protobuf field: its key (wire type 2), length and bytes."""
    return varint(tag << 3 | 2) + varint(len(data)) + data


def nested_values(depth: int) -> bytes:
    """A serialized ``Value`` holding a ``list_value`` holding a ``Value`` ..., ``depth`` levels deep.

    Built from the innermost level out as a list of prefixes, since each level's length covers all inside it.
    """
    prefixes, size = [], 0
    for _ in range(depth):  # Value.list_value (14) = ValueList{values (1) = <inner Value>}
        inner = varint(1 << 3 | 2) + varint(size)
        size += len(inner)
        outer = varint(14 << 3 | 2) + varint(size)
        size += len(outer)
        prefixes.append(outer + inner)
    return b"".join(reversed(prefixes))


def test_protobuf_nested_100000_deep_gets_a_proper_answer(channel: grpc.Channel, tally: Any) -> None:
    entry = field(1, b"out_features") + field(2, nested_values(100_000))  # Layer.params map entry: key, value
    layer = field(1, b"linear") + field(3, entry)  # Layer.type, Layer.params
    spec = varint(2 << 3) + varint(2) + field(3, layer)  # ModelSpec.input_shape = [2], ModelSpec.layers
    request = field(1, field(1, spec))  # {ValidateSpec,CompileSpec}Request.spec = SpecSource{spec}
    for name in ("ValidateSpec", "CompileSpec"):
        code, message = raw_call(channel, SERVICE.methods_by_name[name], [request])
        check(tally, f"protobuf nested 100000 deep · {name}", code, message)
        assert code == "INVALID_ARGUMENT"


def test_a_message_past_the_size_limit_gets_resource_exhausted(channel: grpc.Channel, tally: Any) -> None:
    code, message = raw_call(channel, SERVICE.methods_by_name["Evaluate"], [b"\x1a\x00" + bytes(65 * 1024 * 1024)])
    check(tally, "65 MB message · Evaluate", code, message)
    assert code == "RESOURCE_EXHAUSTED"


# -- tensors that lie -----------------------------------------------------------------------------

DTYPES = list(tensor_pb2.DType.values())
ITEMSIZE = {tensor_pb2.DTYPE_FLOAT32: 4, tensor_pb2.DTYPE_FLOAT64: 8, tensor_pb2.DTYPE_FLOAT16: 2, tensor_pb2.DTYPE_BFLOAT16: 2,
            tensor_pb2.DTYPE_INT64: 8, tensor_pb2.DTYPE_INT32: 4, tensor_pb2.DTYPE_BOOL: 1}
int64 = st.integers(-(2**63), 2**63 - 1)
sizes = st.one_of(st.integers(0, 4), st.sampled_from([-1, -(2**63), 2**31, 2**32, 2**62, 2**63 - 1]), int64)


@st.composite
def lying_tensors(draw: st.DrawFn) -> tensor_pb2.Tensor:
    """A tensor whose dtype, shape and byte count may disagree, or be impossible."""
    dtype = draw(st.sampled_from(DTYPES) | st.integers(-(2**31), 2**31 - 1))
    shape = draw(st.lists(sizes, max_size=10) | st.lists(st.integers(1, 4), min_size=1, max_size=3))
    product = math.prod(shape) if all(size >= 0 for size in shape) else -1
    honest = product * ITEMSIZE.get(dtype, 4) if 0 <= product * ITEMSIZE.get(dtype, 4) <= 4096 else 0
    length = draw(st.sampled_from([honest, honest + 1, max(honest - 1, 0), 0]) | st.integers(0, 64))
    tensor = tensor_pb2.Tensor(dtype=dtype, shape=shape)
    if draw(st.integers(0, 9)) == 0:
        tensor.shared_memory.name = draw(st.sampled_from(["specbuilder_x", "../../dev/shm/x", "specbuilder_" + "a" * 300, "a\x00b", ""]))
        tensor.shared_memory.offset = draw(st.integers(0, 2**64 - 1))
    else:
        tensor.data = draw(st.binary(min_size=length, max_size=length))
    return tensor


def send_everywhere(hostile: Stub, tally: Any, tensor: tensor_pb2.Tensor) -> None:
    """The tensor as Evaluate's input, a StreamEvaluate batch, and Train's x and y."""
    spec = spec_source(SPIRALS)
    calls = {
        "Evaluate input": lambda: hostile.Evaluate(pb.EvaluateRequest(spec=spec, input=tensor, options=pb.EvaluateOptions(statistics=True)), timeout=DEADLINE),
        "StreamEvaluate batch": lambda: hostile.StreamEvaluate(iter([pb.StreamEvaluateRequest(start=pb.StreamEvaluateStart(spec=spec)),
                                                                    pb.StreamEvaluateRequest(batch=tensor)]), timeout=DEADLINE),
        "Train x": lambda: hostile.Train(pb.TrainRequest(spec=spec, arrays=pb.TrainArrays(x=tensor, y=batch(Y)), config=config_values({"epochs": 1})), timeout=DEADLINE),
        "Train y": lambda: hostile.Train(pb.TrainRequest(spec=spec, arrays=pb.TrainArrays(x=batch(X), y=tensor), config=config_values({"epochs": 1})), timeout=DEADLINE),
    }
    for where, call in calls.items():
        code, message, _ = answer(call)
        check(tally, f"lying tensor · {where}", code, message)


@settings(PROFILE, suppress_health_check=GENEROUS)
@given(tensor=lying_tensors())
def test_lying_tensors_get_proper_answers(hostile: Stub, tally: Any, tensor: tensor_pb2.Tensor) -> None:
    send_everywhere(hostile, tally, tensor)


LIES: dict[str, tensor_pb2.Tensor] = {
    "negative size": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[-1, 2], data=bytes(8)),
    "sizes whose product overflows int64": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[2**62, 2**62, 2**62], data=bytes(8)),
    "a zero beside sizes that overflow": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[0, 2**62, 2**62]),
    "2**31 squared": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[2**31, 2**31]),
    "one byte short": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[4, 2], data=bytes(31)),
    "one byte over": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[4, 2], data=bytes(33)),
    "bytes of float64 labelled float32": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[4, 2], data=bytes(64)),
    "unknown dtype": tensor_pb2.Tensor(dtype=99, shape=[4, 2], data=bytes(32)),
    "negative dtype": tensor_pb2.Tensor(dtype=-1, shape=[4, 2], data=bytes(32)),
    "unset dtype": tensor_pb2.Tensor(shape=[4, 2], data=bytes(32)),
    "zero rows": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[0, 2]),
    "zero features": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[4, 0]),
    "no shape with data": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, data=bytes(4)),
    "nothing at all": tensor_pb2.Tensor(),
    "9 dimensions": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[1] * 8 + [2], data=bytes(8)),
    "1000 dimensions": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[1] * 999 + [2], data=bytes(8)),
    "booleans that are not 0 or 1": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_BOOL, shape=[4, 2], data=bytes(range(7, 15))),
    "int64 extremes": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_INT64, shape=[1, 2], data=np.array([[-(2**63), 2**63 - 1]], np.int64).tobytes()),
    "bfloat16 NaN payloads": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_BFLOAT16, shape=[2, 2], data=b"\xc1\x7f\xff\xff\x80\x7f\x80\xff"),
    "shared memory, not allowed here": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[4, 2], shared_memory=tensor_pb2.SharedMemoryRef(name="specbuilder_x")),
    "shared memory at a path": tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[4, 2], shared_memory=tensor_pb2.SharedMemoryRef(name="../../dev/shm/x", offset=2**64 - 1)),
}


@pytest.mark.parametrize("tensor", list(LIES.values()), ids=list(LIES))
def test_hand_made_lying_tensors_get_proper_answers(hostile: Stub, tally: Any, tensor: tensor_pb2.Tensor) -> None:
    send_everywhere(hostile, tally, tensor)


# -- NaN and infinities ----------------------------------------------------------------------------

floats = st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 3.4e38, -3.4e38, 1e-45]))


def expected_counts(x: np.ndarray) -> tuple[int, int, int]:
    return x.size, int(np.isnan(x).sum()), int(np.isinf(x).sum())


def assert_counted(stats: Any, x: np.ndarray) -> None:
    """The statistics of a module that saw exactly ``x``: NaN and infinities counted apart, the rest summarized."""
    count, nans, infs = expected_counts(x)
    assert (stats.count, stats.nan_count, stats.inf_count) == (count, nans, infs)
    assert sum(stats.histogram.counts) == count - nans - infs
    finite = x[np.isfinite(x)]
    if finite.size:
        assert (stats.min, stats.max) == (float(finite.min()), float(finite.max()))
    else:
        assert math.isnan(stats.min) and math.isnan(stats.max)


@settings(PROFILE, suppress_health_check=GENEROUS)
@given(batches=st.lists(hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.just(4)), elements=floats), min_size=1, max_size=3))
def test_nan_and_infinities_are_counted_not_fatal(hostile: Stub, tally: Any, batches: list[np.ndarray]) -> None:
    spec, options = spec_source(IDENTITY), pb.EvaluateOptions(statistics=True)
    for x in batches:
        code, message, result = answer(lambda: hostile.Evaluate(pb.EvaluateRequest(spec=spec, input=batch(x), options=options), timeout=DEADLINE))
        check(tally, "NaN/inf batch · Evaluate", code, message)
        assert code == "OK"
        assert_counted(result.stats[0], x)
        output = np.frombuffer(result.output.data, np.float32).reshape(x.shape)
        np.testing.assert_array_equal(output, x)  # NaN where NaN was, the same infinities
    messages = [pb.StreamEvaluateRequest(start=pb.StreamEvaluateStart(spec=spec, options=options))] + [pb.StreamEvaluateRequest(batch=batch(x)) for x in batches]
    code, message, results = answer(lambda: hostile.StreamEvaluate(iter(messages), timeout=DEADLINE))
    check(tally, "NaN/inf batches · StreamEvaluate", code, message)
    assert code == "OK"
    assert_counted(results[-1].summary.stats[0], np.concatenate(batches))
    tally.count("NaN/inf elements counted", "nan", expected_counts(np.concatenate(batches))[1])
    tally.count("NaN/inf elements counted", "inf", expected_counts(np.concatenate(batches))[2])


def test_nan_spreads_through_a_layer_and_is_counted(hostile: Stub, tally: Any) -> None:
    x = np.array([[math.nan, 0.0], [math.inf, 0.0], [0.5, -0.5]], np.float32)
    result = hostile.Evaluate(pb.EvaluateRequest(spec=spec_source(SPIRALS), input=batch(x), options=pb.EvaluateOptions(statistics=True, all_layers=True)), timeout=DEADLINE)
    fc1 = next(stats for stats in result.stats if stats.name == "fc1")
    assert fc1.count == 48 and fc1.nan_count == 16 and fc1.inf_count == 16  # a NaN row makes 16 NaN, an infinite one 16 infinities
    tally.count("NaN/inf rows through fc1 · Evaluate", "OK")


def test_the_server_is_alive_and_serving_after_the_bytes(hostile_server: ServerProcess) -> None:
    assert_alive_and_serving(hostile_server)
