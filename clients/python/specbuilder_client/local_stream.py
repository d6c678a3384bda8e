"""A StreamEvaluate call on the server's local socket, its batches in shared memory (``specbuilder_wire.localsocket``).

A stream has a connection of its own (``local.LocalConnection``), so it never waits for the
client's Evaluate calls nor they for it, and a ring of ``RING`` of the client's shared-memory
regions (``shm.Ring``). A thread of its own sends: the start, each batch copied into the next
region of the ring (an array from ``Client.shared_array`` is sent where it lies) and its frame,
then ``CLOSE``. It takes a region again only once the answer to the batch it held has come:
while the server computes one batch the next is already in place and read, and the stream's
memory is its ring however long it runs. The ring goes back to the client for the next stream
once the stream is over and its sending thread has stopped.

The answers are read on the caller's thread as it iterates. A ``STATUS`` ends the stream with
its error (the server closes the connection); a connection that breaks mid-stream is
``Unavailable`` (its batches cannot be sent again elsewhere: the outputs already read and the
statistics are the stream's); a stream whose timeout passes is ``DeadlineExceeded``; ``cancel``
ends the connection, and the server stops at the batch it is on.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator

import grpc
import numpy as np

from specbuilder_client.errors import Cancelled, DeadlineExceeded, Unavailable
from specbuilder_client.local import LocalConnection
from specbuilder_client.shm import SharedInputs
from specbuilder_client.streaming import POLL_SECONDS
from specbuilder_wire.localsocket import CLOSE, STREAM
from specbuilder_wire.v1 import service_pb2

RING = 3
"""Regions per stream, so batches in flight: the one the server computes, the next it has read ahead,
and the one being copied in meanwhile."""


class LocalStream:
    """One stream on its own connection: sends on a thread of its own, answers read by ``responses``."""

    def __init__(self, connection: LocalConnection, inputs: SharedInputs, start: service_pb2.StreamEvaluateStart,
                 batches: Iterable[np.ndarray], timeout: float | None) -> None:
        self._connection = connection
        self._ring = inputs.ring(RING)
        self._free = threading.Semaphore(RING)
        self._unanswered: deque[np.ndarray] = deque()
        """The batches sent and not yet answered: an array from ``shared_array`` keeps its region until then."""
        self._stopped = threading.Event()
        self._cancelled = False
        self._sent = self._read = False
        """Whether the sending thread, and the reader, are done: the ring and the connection go once both are,
        or once the sending thread is and the stream was cancelled (its answers will not be read)."""
        self._lock = threading.Lock()
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout
        self.error: Exception | None = None
        """The caller's exception, once their batches failed."""
        threading.Thread(target=self._send, args=(start, batches), name="specbuilder-stream-send", daemon=True).start()

    def _send(self, start: service_pb2.StreamEvaluateStart, batches: Iterable[np.ndarray]) -> None:
        try:
            if self._frame(STREAM, service_pb2.StreamEvaluateRequest(start=start)):
                self._send_batches(batches)
        finally:
            with self._lock:
                self._sent = True
            self._let_go()

    def _send_batches(self, batches: Iterable[np.ndarray]) -> None:
        try:
            for index, batch in enumerate(batches):
                if not self._take_slot():
                    return
                tensor = self._ring.place(batch, index % len(self._ring))
                self._unanswered.append(batch)
                if not self._frame(STREAM, service_pb2.StreamEvaluateRequest(batch=tensor)):
                    return
        except Exception as error:  # noqa: BLE001 - the caller's batches failed: the stream ends, the caller gets it
            self.error = error
        self._frame(CLOSE, None)

    def _take_slot(self) -> bool:
        """Wait for a region whose batch has been answered; False if the stream ended first."""
        while not self._stopped.is_set():
            if self._free.acquire(timeout=POLL_SECONDS):
                return True
        return False

    def _frame(self, kind: int, message: service_pb2.StreamEvaluateRequest | None) -> bool:
        """Send a frame; False if the connection is over (the reader says why)."""
        try:
            self._connection.send(kind, message.SerializeToString() if message is not None else b"")
            return True
        except OSError:
            return False

    def responses(self) -> Iterator[service_pb2.StreamEvaluateResponse]:
        """The answers in order, the summary last; the stream's failure raised as a ``SpecbuilderError``."""
        try:
            while True:
                if self._cancelled:  # answers already on their way are not handed out
                    raise Cancelled(grpc.StatusCode.CANCELLED, "the stream was cancelled")
                try:
                    payload = self._connection.reply(self._deadline)
                except TimeoutError:
                    raise DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED,
                                           f"the stream did not end within its {self._timeout:g} s on the local socket") from None
                except OSError as error:
                    if self._cancelled:
                        raise Cancelled(grpc.StatusCode.CANCELLED, "the stream was cancelled") from None
                    raise Unavailable(grpc.StatusCode.UNAVAILABLE, f"the local socket's connection broke mid-stream: {error}") from None
                response = service_pb2.StreamEvaluateResponse.FromString(payload)
                if not response.HasField("summary"):
                    self._unanswered.popleft()
                    self._free.release()
                yield response
                if response.HasField("summary"):
                    return
        finally:
            self.stop()
            self._connection.shutdown()
            with self._lock:
                self._read = True
            self._let_go()

    def stop(self) -> None:
        """Send nothing more."""
        self._stopped.set()

    def cancel(self) -> None:
        """End the stream now: the connection ends, and with it the server's work on the stream."""
        with self._lock:
            self._cancelled = True
        self.stop()
        self._connection.shutdown()
        self._let_go()

    def _let_go(self) -> None:
        """Give the ring back and close the connection once nothing uses them (see ``_sent``); idempotent."""
        with self._lock:
            if not (self._sent and (self._read or self._cancelled)):
                return
        self._ring.release()
        self._unanswered.clear()
        self._connection.close()


__all__ = ["RING", "LocalStream"]
