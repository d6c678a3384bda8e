"""Prometheus metrics of one server (``serve --metrics-port P`` serves them at ``/metrics``).

Every server has a registry of its own (two servers in one process do not mix their counts):

- ``specbuilder_rpc_total{method, code}``: ModelService calls by how they ended (``OK``, ``INVALID_ARGUMENT``,
  ``CANCELLED`` for a client that went away, ...), and ``specbuilder_rpc_seconds{method}`` their latency;
- ``specbuilder_compute_queue_seconds{lane}`` / ``specbuilder_compute_seconds{lane}``: how long forwards
  waited for their turn in a compute lane (``small``, ``large``) and how long they ran;
- ``specbuilder_forward_calls{lane}`` / ``specbuilder_forward_rows{lane}``: the Evaluate calls and rows each
  forward computed (more than one call: merged by dynamic batching, ``batching``); their ``_count`` is the
  forwards run (``forwards``). ``specbuilder_evaluate_waiting``: Evaluate calls whose forward has not started;
- ``specbuilder_trainings_running`` and ``specbuilder_streams_open``: gauges read when scraped;
- ``specbuilder_store_seconds{operation}`` / ``specbuilder_store_errors_total{operation}``: each store
  operation the server made, and those that failed for a reason other than an unknown id.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from specbuilder.store import ModelNotFound

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: from a small model's sub-millisecond forward to a call at the default compute cap."""
CALL_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Calls per forward: one (alone) to a merged forward of one-row calls at the default ``max_batch_rows``."""
ROW_BUCKETS = tuple(4**power for power in range(11))
"""Rows per forward: one to a million."""


class Metrics:
    """The server's counters, histograms and gauges, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter("specbuilder_rpc", "ModelService calls by method and status code", ("method", "code"), registry=self.registry)
        self.rpc_seconds = Histogram("specbuilder_rpc_seconds", "ModelService call latency", ("method",),
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_seconds = Histogram("specbuilder_compute_queue_seconds", "time a forward waited for its compute lane", ("lane",),
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.compute_seconds = Histogram("specbuilder_compute_seconds", "time a forward computed", ("lane",),
                                         buckets=LATENCY_BUCKETS, registry=self.registry)
        self.store_seconds = Histogram("specbuilder_store_seconds", "store operation latency", ("operation",),
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.store_errors = Counter("specbuilder_store_errors", "store operations that failed", ("operation",), registry=self.registry)
        self.forward_calls = Histogram("specbuilder_forward_calls", "Evaluate calls one forward computed", ("lane",),
                                       buckets=CALL_BUCKETS, registry=self.registry)
        self.forward_rows = Histogram("specbuilder_forward_rows", "rows one Evaluate forward computed", ("lane",),
                                      buckets=ROW_BUCKETS, registry=self.registry)
        self.evaluate_waiting = Gauge("specbuilder_evaluate_waiting", "Evaluate calls whose forward has not started",
                                      registry=self.registry)
        self.trainings = Gauge("specbuilder_trainings_running", "training runs going now", registry=self.registry)
        self.streams = Gauge("specbuilder_streams_open", "StreamEvaluate and Train calls open now", registry=self.registry)
        self.port: int | None = None
        """Where ``/metrics`` is served, once ``serve`` has started it."""

    def rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpcs.labels(method, code).inc()
        self.rpc_seconds.labels(method).observe(seconds)

    def lane(self, name: str) -> Callable[[float, float], None]:
        """What a compute lane reports each task with: seconds waited, seconds run."""
        queued, ran = self.queue_seconds.labels(name), self.compute_seconds.labels(name)

        def observe(waited: float, computed: float) -> None:
            queued.observe(waited)
            ran.observe(computed)

        return observe

    def forwards(self, lane: str) -> Callable[[int, int], None]:
        """What a compute lane reports each Evaluate forward with: the calls it computed and their rows in all."""
        calls, rows = self.forward_calls.labels(lane), self.forward_rows.labels(lane)

        def observe(count: int, total: int) -> None:
            calls.observe(count)
            rows.observe(total)

        return observe

    @contextmanager
    def store_operation(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except ModelNotFound:
            raise
        except Exception:
            self.store_errors.labels(name).inc()
            raise
        finally:
            self.store_seconds.labels(name).observe(time.perf_counter() - started)

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve ``/metrics`` on ``host:port`` (0: a free port) in a thread; returns how to stop it. ``port`` is then set."""
        server, thread = start_http_server(port, host, registry=self.registry)
        self.port = server.server_address[1]

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join()

        return stop


class MeteredStore:
    """A store whose public methods are timed into ``Metrics.store_operation``; everything else passes through."""

    def __init__(self, store: Any, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self._metrics.store_operation(name):
                return attribute(*args, **kwargs)

        return timed
