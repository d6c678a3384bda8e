"""``StreamResult``: a StreamEvaluate call whose memory stays flat however many batches pass.

The caller's batches are read and sent on a thread of their own, ahead of the outputs: over gRPC
each is encoded up to ``SEND_AHEAD`` batches before gRPC takes it (``StreamRequests``), so the
next one is ready the moment the transport can carry it; on the local socket each goes into a
shared-memory region of the stream's ring (``local_stream``). Each output is handed to the
caller as it arrives. Nothing accumulates on either side: what is sent ahead is bounded here,
and the server reads ahead a bounded number of batches too.

If the caller's batches fail (their iterator raises, or a batch has a dtype the wire cannot
carry), the stream ends there: the outputs of the batches already sent still come, then the
caller's own exception is raised in place of the summary.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

import grpc
import numpy as np

from specbuilder_client.errors import Cancelled, SpecbuilderError, from_rpc
from specbuilder_client.results import StreamSummary
from specbuilder_wire.arrays import to_numpy
from specbuilder_wire.heap import keep_large_buffers
from specbuilder_wire.message_bytes import serialize_with_tensor
from specbuilder_wire.v1 import service_pb2

SEND_AHEAD = 2
"""Batches encoded and waiting for gRPC to take them: the next one is ready when the transport is, and
a stream holds at most this many encoded batches besides the one gRPC is sending."""
POLL_SECONDS = 0.1
"""How often a thread waiting to hand over a batch looks whether the stream has ended meanwhile."""
ROUTE_SECONDS = 2.0
"""How long the requests wait, after the start, for the client to say whether the batches go over gRPC
(``StreamRequests.route``): a server that names no local socket answers the call's headers at once."""
T = TypeVar("T")


class Sender(Protocol):
    """What sends a stream's batches: the caller's exception, once their iterator or one of them failed, and how to stop it."""

    error: Exception | None

    def stop(self) -> None: ...


def _put_unless_stopped(into: queue.Queue[T], item: T, stopped: threading.Event) -> bool:
    """Put ``item`` into the bounded queue ``into`` once there is room (True), unless ``stopped`` is set first (False)."""
    while not stopped.is_set():
        try:
            into.put(item, timeout=POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


class StreamRequests:
    """gRPC's request iterator for one stream: the start, then the batches, serialized on a thread of their
    own at most ``SEND_AHEAD`` ahead; remembers a failing batch (``error``).

    With ``routed`` the iterator waits after the start until ``route`` says whether the batches go over
    gRPC at all (a client that may move the stream to the server's local socket asks the server first).
    """

    def __init__(self, start: service_pb2.StreamEvaluateStart, batches: Iterable[np.ndarray], routed: bool = False) -> None:
        self._start = start
        self._batches = batches
        self._encoded: queue.Queue[bytes | None] = queue.Queue(SEND_AHEAD)
        self._stopped = threading.Event()
        self._routed = threading.Event() if routed else None
        self._on_grpc = True
        self._route_lock = threading.Lock()
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[bytes]:
        """The requests already serialized: a batch's elements are copied once (``serialize_with_tensor``,
        with the process's malloc thresholds fixed first: ``keep_large_buffers``)."""
        keep_large_buffers()
        yield service_pb2.StreamEvaluateRequest(start=self._start).SerializeToString()
        if self._routed is not None:
            self._routed.wait(ROUTE_SECONDS)
            if not self.route(True):  # the batches went elsewhere: this call ends with its start
                return
        threading.Thread(target=self._encode, name="specbuilder-stream-send", daemon=True).start()
        while not self._stopped.is_set():
            try:
                message = self._encoded.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if message is None:
                return
            yield message

    def route(self, on_grpc: bool) -> bool:
        """Say where the batches go, once: over this call (True) or elsewhere (False). Returns whether the
        batches go where asked (False: the requests had already decided, having waited ``ROUTE_SECONDS``)."""
        with self._route_lock:
            if self._routed is None or self._routed.is_set():
                return self._on_grpc == on_grpc
            self._on_grpc = on_grpc
            self._routed.set()
            return True

    def _encode(self) -> None:
        try:
            for batch in self._batches:
                if not _put_unless_stopped(self._encoded, serialize_with_tensor(service_pb2.StreamEvaluateRequest(), "batch", batch),
                                          self._stopped):
                    return
        except Exception as error:  # gRPC would only log it: keep it for the caller, end the stream
            self.error = error
        _put_unless_stopped(self._encoded, None, self._stopped)

    def stop(self) -> None:
        """Send nothing more: the encoding thread ends at its next batch, gRPC's request thread at once."""
        self._stopped.set()


def grpc_responses(call: Iterable[service_pb2.StreamEvaluateResponse]) -> Iterator[service_pb2.StreamEvaluateResponse]:
    """A gRPC call's responses, its failure raised as a ``SpecbuilderError``."""
    try:
        yield from call
    except grpc.RpcError as error:
        raise from_rpc(error) from None


def _abandon(sender: Sender, cancel: Callable[[], None]) -> None:
    sender.stop()
    cancel()


class StreamResult:
    """The outputs of a StreamEvaluate call, batch by batch and in order, then ``summary``.

    Iterate ``outputs()`` (or the result itself) for one array per batch — each a read-only view
    on the received bytes. ``summary`` is there once they are read; reading it earlier reads
    (and drops) the outputs not yet read. ``cancel()`` ends the call; iteration then stops quietly.
    """

    def __init__(self, responses: Iterator[service_pb2.StreamEvaluateResponse], sender: Sender, cancel: Callable[[], None]) -> None:
        """``responses``: the call's answers, a failure raised as a ``SpecbuilderError``; ``sender``: what sends the
        batches; ``cancel``: ends the call."""
        self._responses = responses
        self._sender = sender
        self._cancel = cancel
        self._summary: StreamSummary | None = None
        self._cancelled = False
        weakref.finalize(self, _abandon, sender, cancel)  # a result dropped unread lets its sending thread and its call go

    def outputs(self) -> Iterator[np.ndarray]:
        """One output array per batch, in the order the batches were given."""
        try:
            for response in self._responses:
                if response.HasField("summary"):
                    if self._sender.error is not None:
                        raise self._sender.error
                    self._summary = StreamSummary.from_proto(response.summary)
                elif response.output.HasField("output"):
                    yield to_numpy(response.output.output, f"outputs[{response.output.batch_index}]")
        except SpecbuilderError as error:
            if self._sender.error is not None:
                raise self._sender.error from None
            if not (self._cancelled and isinstance(error, Cancelled)):
                raise
        finally:
            self._sender.stop()

    __iter__ = outputs

    @property
    def summary(self) -> StreamSummary:
        """Counts and statistics over the whole stream; reads any outputs not yet read."""
        for _ in self.outputs():
            pass
        if self._sender.error is not None:
            raise self._sender.error
        if self._summary is None:
            raise Cancelled(grpc.StatusCode.CANCELLED, "the stream was cancelled before its summary")
        return self._summary

    def cancel(self) -> None:
        """End the call now; the server stops at the batch it is on."""
        self._cancelled = True
        self._sender.stop()
        self._cancel()


__all__ = ["POLL_SECONDS", "ROUTE_SECONDS", "SEND_AHEAD", "Sender", "StreamRequests", "StreamResult", "grpc_responses"]
