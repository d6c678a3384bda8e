"""How the server parses a request with a batch (``raw_handlers.Parser``): small ones whole, large ones
cut on the event loop (the batch's elements left where they arrived), and on a worker thread only
what would cost the loop too much: many fields, or a large rest."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from specbuilder_server.raw_handlers import CUT_BYTES, INLINE_PARSE_BYTES, LOOP_FIELDS, SERVICE, Received, parser_for
from specbuilder_wire.message_bytes import TooManyFields, cut_tensor_data, field_head, serialize_with_tensor
from specbuilder_wire.v1 import service_pb2

PARSER = parser_for(service_pb2.EvaluateRequest.FromString, SERVICE.methods_by_name["Evaluate"])
INPUT = service_pb2.EvaluateRequest.DESCRIPTOR.fields_by_name["input"].number


def parsed(raw: bytes) -> tuple[Received[Any], int]:
    """The request as the server parses it, and how many times it went to a worker thread."""
    hops = []

    async def blocking(fn: Any, *args: Any) -> Any:
        hops.append(fn)
        return fn(*args)

    return asyncio.run(PARSER.parsed(raw, blocking)), len(hops)


def request(rows: int, model_id: str = "m") -> tuple[bytes, np.ndarray]:
    x = np.arange(rows * 784, dtype=np.float32).reshape(rows, 784)
    return serialize_with_tensor(service_pb2.EvaluateRequest(model_id=model_id), "input", x), x


def test_a_small_request_is_parsed_whole_on_the_loop() -> None:
    raw, x = request(4)
    assert len(raw) < CUT_BYTES
    received, hops = parsed(raw)
    assert hops == 0 and received.data is None and received.message.input.data == x.tobytes()


def test_a_large_batch_is_cut_on_the_loop_and_left_where_it_arrived() -> None:
    raw, x = request(1024)
    received, hops = parsed(raw)
    assert hops == 0 and received.data is not None and received.data.obj is raw
    assert received.message.model_id == "m" and not received.message.input.data
    np.testing.assert_array_equal(np.frombuffer(received.data, np.float32).reshape(x.shape), x)


def test_what_would_cost_the_loop_too_much_goes_to_a_worker() -> None:
    raw, x = request(1024)
    many = field_head(service_pb2.EvaluateRequest.DESCRIPTOR.fields_by_name["model_id"].number, 1) + b"m"
    crowded = many * LOOP_FIELDS + raw  # a batch behind more fields than the loop reads
    received, hops = parsed(crowded)
    assert hops == 1 and received.data is not None and received.message.model_id == "m"
    long_id = "x" * (INLINE_PARSE_BYTES + 1)
    received, hops = parsed(request(1024, long_id)[0])  # the rest, once the batch is out, is still large
    assert hops == 1 and received.message.model_id == long_id


def test_a_cut_reads_at_most_the_fields_it_is_allowed() -> None:
    raw, _ = request(2)
    assert cut_tensor_data(raw, INPUT, max_fields=10)[1] is not None
    with pytest.raises(TooManyFields):
        cut_tensor_data(raw, INPUT, max_fields=2)
