"""gRPC's own floor: a bare grpcio server whose methods take raw bytes and answer 40 KB.

No protobuf anywhere: the handlers have no deserializer (they receive the request's bytes) and
no serializer (they return a ready 40 KB ``bytes``), and the callers use generic
``channel.unary_unary`` / ``channel.stream_stream`` with identity serializers. ``Call`` answers
one request; ``Stream``, a bidirectional stream, answers each of its messages as it arrives;
``Echo`` answers each message with its own bytes (the floor issue 16 set its stream target against).
What a call costs here is what gRPC itself costs to carry 3.2 MB one way and 40 KB back between
two processes on this machine (a stream: per message) — the floor any gRPC service,
specbuilder's included, stands on (docs/benchmarks.md, "Method").

Run as ``python -m benchmarks.grpc_floor --port 0`` (``benchmarks.serving.baseline_server``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator

import grpc

from benchmarks.serving import run_until_signalled

METHOD = "/floor.Floor/Call"
STREAM_METHOD = "/floor.Floor/Stream"
ECHO_METHOD = "/floor.Floor/Echo"
ANSWER_BYTES = 1024 * 10 * 4
"""40 KB: a batch of 1024 rows of 10 float32 logits."""


def handler() -> grpc.GenericRpcHandler:
    """``Call`` and ``Stream``: ignore the requests' bytes, answer ``ANSWER_BYTES`` bytes for each."""
    answer = bytes(ANSWER_BYTES)

    def call(request: bytes, context: grpc.ServicerContext) -> bytes:
        return answer

    def stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in requests:
            yield answer

    def echo(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from requests

    return grpc.method_handlers_generic_handler("floor.Floor", {
        "Call": grpc.unary_unary_rpc_method_handler(call), "Stream": grpc.stream_stream_rpc_method_handler(stream),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
    })


def caller(channel: grpc.Channel) -> Callable[[bytes], bytes]:
    """``Call`` on ``channel``, bytes in and out (identity serializers)."""
    return channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)


def streamer(channel: grpc.Channel, method: str = STREAM_METHOD) -> Callable[[Iterable[bytes]], int]:
    """``Stream`` (or ``Echo``) on ``channel``: sends every message of an iterable, reads every answer; how many came."""
    call = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
    return lambda messages: sum(1 for _ in call(iter(messages)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    run_until_signalled([handler()], parser.parse_args().port)


if __name__ == "__main__":
    main()
