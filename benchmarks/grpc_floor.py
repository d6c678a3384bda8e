"""gRPC's own floor: a bare grpcio server whose one method takes raw bytes and answers 40 KB.

No protobuf anywhere: the handler has no deserializer (it receives the request's bytes) and
no serializer (it returns a ready 40 KB ``bytes``), and the caller uses a generic
``channel.unary_unary`` with identity serializers. What a call costs here is what gRPC itself
costs to carry 3.2 MB one way and 40 KB back between two processes on this machine — the
floor any gRPC service, specbuilder's included, stands on (docs/benchmarks.md, "Method").

Run as ``python -m benchmarks.grpc_floor --port 0`` (``benchmarks.serving.baseline_server``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import grpc

from benchmarks.serving import run_until_signalled

METHOD = "/floor.Floor/Call"
ANSWER_BYTES = 1024 * 10 * 4
"""40 KB: a batch of 1024 rows of 10 float32 logits."""


def handler() -> grpc.GenericRpcHandler:
    """The one method: ignore the request's bytes, answer ``ANSWER_BYTES`` bytes."""
    answer = bytes(ANSWER_BYTES)

    def call(request: bytes, context: grpc.ServicerContext) -> bytes:
        return answer

    return grpc.method_handlers_generic_handler("floor.Floor", {"Call": grpc.unary_unary_rpc_method_handler(call)})


def caller(channel: grpc.Channel) -> Callable[[bytes], bytes]:
    """The method on ``channel``, bytes in and out (identity serializers)."""
    return channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    run_until_signalled([handler()], parser.parse_args().port)


if __name__ == "__main__":
    main()
