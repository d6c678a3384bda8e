"""A call's compute budget: when the work for one call must stop, checked between layers.

A ``Budget`` says when a call's compute must stop: its deadline, a cancel (the client went
away), or the server's cap on compute seconds per call. Its ``check`` runs before every layer
(``forward_pass.forward``), so a call stops within one layer of any of them, with ``Stopped``:
the status the call then ends with. Calls merged into one forward (``batching``) are checked
together (``Shared``): each stops alone, and the forward only when all have.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

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
        """Why the call was cancelled; None while it is not. Set on the event loop and read on a compute thread:
        one reference assigned needs no lock (an Event would make a lock and a condition for every call)."""

    @property
    def cancelled(self) -> bool:
        return self._cancelled is not None

    def cancel(self, reason: str) -> None:
        """Stop the call's compute at its next check (the first reason given is kept)."""
        if self._cancelled is None:
            self._cancelled = reason

    def check(self, share: float = 1.0) -> None:
        """Raise ``Stopped`` if the call was cancelled, its deadline passed, or its compute ran past the cap.

        ``share`` is the part of the work being computed that is this call's (its rows' part of a forward
        merged with other calls'): that part of the time since the first check counts against the cap,
        so a call that fits the cap alone fits it merged too.
        """
        if self._cancelled is not None:
            raise Stopped(grpc.StatusCode.CANCELLED, self._cancelled)
        now = time.monotonic()
        if self._started is None:
            self._started = now
        if self._deadline is not None and now > self._deadline:
            raise Stopped(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed while it was computing")
        if (now - self._started) * share > self._max_seconds:
            raise Stopped(grpc.StatusCode.RESOURCE_EXHAUSTED, (
                f"the call computed for more than {self._max_seconds:g} s, this server's limit (max_compute_seconds); "
                "send fewer rows per call"))


class Shared:
    """The budgets of calls computing one merged forward, each with its share of the work: ``check``
    stops a call whose own budget ran out (it is kept in ``stopped`` and the forward goes on for the
    others), and the forward only once every call has stopped."""

    def __init__(self, budgets: Sequence[Budget], shares: Sequence[float]) -> None:
        self._budgets = list(zip(budgets, shares, strict=True))
        self.stopped: dict[int, Stopped] = {}
        """Why each stopped call stopped, by its index in ``budgets``."""

    def check(self) -> None:
        """Check every call still computing; ``Stopped`` (the last one's) once none is."""
        for index, (budget, share) in enumerate(self._budgets):
            if index not in self.stopped:
                try:
                    budget.check(share)
                except Stopped as stop:
                    self.stopped[index] = stop
        if len(self.stopped) == len(self._budgets):
            raise self.stopped[max(self.stopped)]


class Check(Protocol):
    """What a forward checks between layers: one call's ``Budget``, or the calls ``Shared`` by a merged forward."""

    def check(self) -> None: ...


UNLIMITED = Budget(None, float("inf"))
"""A budget that never stops a call (one not tied to a client's call)."""
