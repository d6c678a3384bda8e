"""A call's compute budget: when the work for one call must stop, checked between layers.

A ``Budget`` says when a call's compute must stop: its deadline, a cancel (the client went
away), or the server's cap on compute seconds per call. Its ``check`` runs before every layer
(``forward_pass.forward``), so a call stops within one layer of any of them, with ``Stopped``:
the status the call then ends with.
"""

from __future__ import annotations

import time

import grpc

from specbuilder_server.errors import RequestError


class Stopped(RequestError):
    """A call's compute stopped before its end: DEADLINE_EXCEEDED, CANCELLED or RESOURCE_EXHAUSTED (the compute cap)."""


class Budget:
    """When one call's compute must stop; ``check`` raises ``Stopped`` once it must."""

    def __init__(self, deadline: float | None, max_seconds: float) -> None:
        self._deadline = deadline
        """``time.monotonic()`` by which the call must have ended; None: no deadline."""
        self._max_seconds = max_seconds
        self._started: float | None = None
        self._cancelled: str | None = None
        """Why the call was cancelled, once it was: set on the event loop, read on a compute thread (one
        reference, written once: what a ``threading.Event`` adds, a lock and a condition per call, is not needed)."""

    def cancel(self, reason: str) -> None:
        """Stop the call's compute at its next check (the first reason given is kept)."""
        if self._cancelled is None:
            self._cancelled = reason

    def check(self) -> None:
        """Raise ``Stopped`` if the call was cancelled, its deadline passed, or its compute ran past the cap."""
        if self._cancelled is not None:
            raise Stopped(grpc.StatusCode.CANCELLED, self._cancelled)
        now = time.monotonic()
        if self._started is None:
            self._started = now
        if self._deadline is not None and now > self._deadline:
            raise Stopped(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed while it was computing")
        if now - self._started > self._max_seconds:
            raise Stopped(grpc.StatusCode.RESOURCE_EXHAUSTED, (
                f"the call computed for more than {self._max_seconds:g} s, this server's limit (max_compute_seconds); "
                "send fewer rows per call"))


UNLIMITED = Budget(None, float("inf"))
"""A budget that never stops a call (one not tied to a client's call)."""
