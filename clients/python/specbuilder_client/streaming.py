"""``StreamResult``: a StreamEvaluate call whose memory stays flat however many batches pass.

Requests are a generator: a batch is encoded only when gRPC's flow control asks for the next
one, and each output is handed to the caller as it arrives; nothing accumulates on either side.
If the caller's batches fail (their iterator raises, or a batch has a dtype the wire cannot
carry), the stream ends there: the outputs of the batches already sent still come, then the
caller's own exception is raised in place of the summary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import grpc
import numpy as np

from specbuilder_client.errors import Cancelled, from_rpc
from specbuilder_client.results import StreamSummary
from specbuilder_wire.arrays import to_numpy
from specbuilder_wire.heap import keep_large_buffers
from specbuilder_wire.message_bytes import serialize_with_tensor
from specbuilder_wire.v1 import service_pb2


class StreamRequests:
    """The requests, serialized: the start, then one per batch, encoded lazily; remembers a failing batch."""

    def __init__(self, start: service_pb2.StreamEvaluateStart, batches: Iterable[np.ndarray]) -> None:
        self._start = start
        self._batches = batches
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[bytes]:
        """The requests already serialized: a batch's elements are copied once (``serialize_with_tensor``,
        with the process's malloc thresholds fixed first: ``keep_large_buffers``)."""
        keep_large_buffers()
        yield service_pb2.StreamEvaluateRequest(start=self._start).SerializeToString()
        try:
            for batch in self._batches:
                yield serialize_with_tensor(service_pb2.StreamEvaluateRequest(), "batch", batch)
        except Exception as error:  # gRPC would only log it: keep it for the caller, end the stream
            self.error = error


class StreamResult:
    """The outputs of a StreamEvaluate call, batch by batch and in order, then ``summary``.

    Iterate ``outputs()`` (or the result itself) for one array per batch — each a read-only view
    on the received bytes. ``summary`` is there once they are read; reading it earlier reads
    (and drops) the outputs not yet read. ``cancel()`` ends the call; iteration then stops quietly.
    """

    def __init__(self, call: Any, requests: StreamRequests) -> None:
        """``call`` is the gRPC call: an iterator of ``StreamEvaluateResponse`` with ``cancel()``."""
        self._call = call
        self._requests = requests
        self._summary: StreamSummary | None = None
        self._cancelled = False

    def outputs(self) -> Iterator[np.ndarray]:
        """One output array per batch, in the order the batches were given."""
        try:
            for response in self._call:
                if response.HasField("summary"):
                    if self._requests.error is not None:
                        raise self._requests.error
                    self._summary = StreamSummary.from_proto(response.summary)
                elif response.output.HasField("output"):
                    yield to_numpy(response.output.output, f"outputs[{response.output.batch_index}]")
        except grpc.RpcError as error:
            if self._requests.error is not None:
                raise self._requests.error from None
            if not (self._cancelled and error.code() == grpc.StatusCode.CANCELLED):
                raise from_rpc(error) from None

    __iter__ = outputs

    @property
    def summary(self) -> StreamSummary:
        """Counts and statistics over the whole stream; reads any outputs not yet read."""
        for _ in self.outputs():
            pass
        if self._requests.error is not None:
            raise self._requests.error
        if self._summary is None:
            raise Cancelled(grpc.StatusCode.CANCELLED, "the stream was cancelled before its summary")
        return self._summary

    def cancel(self) -> None:
        """End the call now; the server stops at the batch it is on."""
        self._cancelled = True
        self._call.cancel()


__all__ = ["StreamRequests", "StreamResult"]
