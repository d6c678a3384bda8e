"""Open streams, counted so a server holds a bounded number: in all, and per connection.

A StreamEvaluate or Train call takes a slot for as long as it runs (``StreamSlots.held``) and is
refused RESOURCE_EXHAUSTED, naming the limit, when none is free: many streams from one client
cannot take every slot, and no number of them can take more than ``max_streams``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from specbuilder_server.errors import exhausted


class StreamSlots:
    """Open streams, counted in all and per connection (its peer address); used on the event loop only."""

    def __init__(self, total: int, per_connection: int) -> None:
        self._total = total
        self._per_connection = per_connection
        self._open: Counter[str] = Counter()
        self._count = 0

    @contextmanager
    def held(self, peer: str) -> Iterator[None]:
        """One slot while the block runs; RESOURCE_EXHAUSTED naming the limit when none is free."""
        if self._count >= self._total:
            raise exhausted(f"{self._total} streams are open on this server, its limit (max_streams); try again when one has ended")
        if self._open[peer] >= self._per_connection:
            raise exhausted(f"{self._per_connection} streams are open on this connection, the server's limit per connection "
                            "(max_streams_per_connection); close one, or open another connection")
        self._open[peer] += 1
        self._count += 1
        try:
            yield
        finally:
            self._count -= 1
            self._open[peer] -= 1
            if not self._open[peer]:
                del self._open[peer]

    def __len__(self) -> int:
        """Streams open now (read from any thread)."""
        return self._count
