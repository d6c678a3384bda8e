"""The issue's reference: a minimal hand-written grpcio service that serves the MLP with raw bytes.

What a person writes in ten lines when all they need is this one model: the request is the
batch's float32 bytes (no protobuf, no shape: the feature count is fixed), the handler runs the
same compiled MLP on gRPC's own thread and answers the logits' bytes. No validation, no spec,
no limits, no statistics, no errors a person could read. The issue measured it at about 2.1x the
in-process forward and calls that "the limit of gRPC over loopback"; the benchmark measures it
in the same run as specbuilder's server, so the two can be set side by side on any machine.

Run as ``python -m benchmarks.grpc_minimal --port 0 [--device cuda]`` (``benchmarks.serving.baseline_server``).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np

from benchmarks.serving import serve_model

METHOD = "/minimal.Model/Evaluate"


def handler(device: str = "cpu") -> grpc.GenericRpcHandler:
    """``Evaluate(bytes) -> bytes`` through the benchmark's MLP, compiled by specbuilder with its seed, on ``device``."""
    import torch

    from benchmarks.grpc_workload import FEATURES, MLP, SEED
    from specbuilder.compiler import compile_spec

    model = compile_spec(MLP, device=device, seed=SEED).eval()

    def evaluate(request: bytes, context: grpc.ServicerContext) -> bytes:
        batch = torch.from_numpy(np.frombuffer(request, dtype=np.float32).reshape(-1, FEATURES))
        with torch.inference_mode():
            return model(batch.to(device)).cpu().numpy().tobytes()

    return grpc.method_handlers_generic_handler("minimal.Model", {"Evaluate": grpc.unary_unary_rpc_method_handler(evaluate)})


def caller(channel: grpc.Channel) -> Callable[[np.ndarray], np.ndarray]:
    """Evaluate on ``channel``: a float32 batch in, its logits as an array."""
    call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    return lambda array: np.frombuffer(call(np.ascontiguousarray(array, np.float32).tobytes()), np.float32).reshape(len(array), -1)


if __name__ == "__main__":
    serve_model(__doc__.split("\n\n")[0], handler)
