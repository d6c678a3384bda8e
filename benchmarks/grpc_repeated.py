"""The design the wire contract rejects, for comparison: tensors as ``repeated float``.

A minimal hand-written grpcio service, as a person would write it: one message type with
``repeated int64 shape`` and ``repeated float values`` (built at start-up from a descriptor,
no protoc), a handler that turns the values into a tensor with ``np.array``, runs the same
compiled MLP as specbuilder's server and puts the outputs back with ``extend(tolist())``.

Run as ``python -m benchmarks.grpc_repeated --port 0 [--device cuda]`` (``benchmarks.serving.baseline_server``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from benchmarks.serving import serve_model

METHOD = "/repeated.Model/Evaluate"
Field = descriptor_pb2.FieldDescriptorProto


def floats_message() -> type[Any]:
    """The message class ``repeated.Floats { repeated int64 shape = 1; repeated float values = 2; }`` (packed, proto3)."""
    file = descriptor_pb2.FileDescriptorProto(name="repeated_floats.proto", package="repeated", syntax="proto3")
    message = file.message_type.add(name="Floats")
    message.field.add(name="shape", number=1, type=Field.TYPE_INT64, label=Field.LABEL_REPEATED)
    message.field.add(name="values", number=2, type=Field.TYPE_FLOAT, label=Field.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("repeated.Floats"))


Floats = floats_message()


def encode(array: np.ndarray) -> Any:
    """An array as a ``Floats`` message."""
    message = Floats(shape=array.shape)
    message.values.extend(array.ravel().tolist())
    return message


def decode(message: Any) -> np.ndarray:
    """A ``Floats`` message as a float32 array."""
    return np.array(message.values, dtype=np.float32).reshape(tuple(message.shape))


def handler(device: str = "cpu") -> grpc.GenericRpcHandler:
    """``Evaluate(Floats) -> Floats`` through the benchmark's MLP, compiled by specbuilder with its seed, on ``device``."""
    import torch

    from benchmarks.grpc_workload import MLP, SEED
    from specbuilder.compiler import compile_spec

    model = compile_spec(MLP, device=device, seed=SEED).eval()

    def evaluate(request: Any, context: grpc.ServicerContext) -> Any:
        with torch.inference_mode():
            return encode(model(torch.from_numpy(decode(request)).to(device)).cpu().numpy())

    method = grpc.unary_unary_rpc_method_handler(evaluate, request_deserializer=Floats.FromString, response_serializer=Floats.SerializeToString)
    return grpc.method_handlers_generic_handler("repeated.Model", {"Evaluate": method})


def caller(channel: grpc.Channel) -> Callable[[np.ndarray], np.ndarray]:
    """Evaluate on ``channel``: an array in, the outputs as an array."""
    call = channel.unary_unary(METHOD, request_serializer=Floats.SerializeToString, response_deserializer=Floats.FromString)
    return lambda array: decode(call(encode(array)))


if __name__ == "__main__":
    serve_model(__doc__.split("\n\n")[0], handler)
