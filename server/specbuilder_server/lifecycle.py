"""Starting and stopping a server: ``start_server(config)`` returns a ``RunningServer``.

The server is a ``grpc.aio`` server on an event loop of its own (a thread, ``specbuilder-loop``):
calls waiting for a message, for their turn or for a slow reader are coroutines there and hold
no thread. Wires the parts together: the model store, the model cache, the training jobs, the
worker threads for blocking work (``worker_pool.TrimmingPool``, which gives memory back when idle),
the compute lanes, the shared-memory regions and the local socket (with ``--shared-memory``),
the servicer, Prometheus metrics (``metrics``; served with ``metrics_port``), the standard health
service (SERVING overall and per service) and server reflection, the token interceptor when tokens
are set (``auth``, with their roles), TLS when a certificate is given (client certificates required
with ``tls_client_ca``), the message size limits, and the connections' age limit when one is set.
``RunningServer.stop(grace)`` is the graceful stop (SIGTERM in ``specbuilder serve``): health
turns NOT_SERVING, running trainings are cancelled and recorded, in-flight calls get ``grace``
seconds to finish, then the store is closed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from specbuilder.devices import resolve_device
from specbuilder.store import ModelStore, StoreError
from specbuilder_server.auth import Access, TokenAuth
from specbuilder_server.compute_lanes import Lanes
from specbuilder_server.config import ServerConfig
from specbuilder_server.jobs import TrainingJobs
from specbuilder_server.local_socket import LocalSocket
from specbuilder_server.malloc_tuning import malloc_trim, tune_malloc
from specbuilder_server.metrics import MeteredStore, Metrics
from specbuilder_server.model_cache import ModelCache, Models
from specbuilder_server.raw_handlers import model_service
from specbuilder_server.servicer import ModelServicer
from specbuilder_server.torch_tensors import UNWRITABLE
from specbuilder_server.worker_pool import TrimmingPool
from specbuilder_wire.regions import SharedRegions
from specbuilder_wire.v1 import service_pb2

log = logging.getLogger("specbuilder_server")

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
"""``specbuilder.v1.ModelService``: the name health checks and reflection know it by."""
RECORD_SECONDS = 10.0
"""After the grace period, how long a stop waits for cancelled trainings to be recorded."""
T = TypeVar("T")


class ServerStartError(Exception):
    """The server could not start (a port in use, unreadable TLS files, a device that is not there)."""


class _Loop:
    """An event loop running in a thread of its own until ``close``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="specbuilder-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        """Cancel what still runs on the loop, let it unwind, and stop the loop."""
        self.run(self._cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    @staticmethod
    async def _cancel_the_rest() -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=RECORD_SECONDS)


@dataclass(eq=False, repr=False)
class RunningServer:
    """A started server: where it listens, and how to stop it (``start_server`` makes one)."""

    config: ServerConfig
    port: int
    """The bound port (the free one picked when the config says 0)."""
    servicer: ModelServicer
    _loop: _Loop
    _server: grpc.aio.Server
    _pool: TrimmingPool
    _health: health.aio.HealthServicer
    _jobs: TrainingJobs
    _store: ModelStore
    _local: LocalSocket | None
    _stop_metrics: Callable[[], None] | None
    _stopped: threading.Event = field(default_factory=threading.Event, init=False)
    _stopping: threading.Lock = field(default_factory=threading.Lock, init=False)

    @property
    def store(self) -> str:
        """The store, as people may see it (no password)."""
        return repr(self._store)

    @property
    def metrics_port(self) -> int | None:
        """Where ``/metrics`` is served (``metrics_port``; the free one picked for 0), None when it is not."""
        return self.servicer.metrics.port

    @property
    def local_socket(self) -> str | None:
        """The local socket's path (``--shared-memory``), None without one."""
        return self._local.path if self._local is not None else None

    @property
    def address(self) -> str:
        """``host:port`` to connect to."""
        return self.config.model_copy(update={"port": self.port}).address

    def stop(self, grace: float | None = None) -> None:
        """Stop gracefully: NOT_SERVING, trainings cancelled and recorded, calls given ``grace`` seconds; idempotent."""
        with self._stopping:
            if self._stopped.is_set():
                return
            grace = self.config.grace_seconds if grace is None else grace
            self._loop.run(self._stop_serving(grace))
            self._loop.close()
            self._pool.shutdown(wait=False)
            if self._stop_metrics is not None:
                self._stop_metrics()
            if not self._jobs.wait(RECORD_SECONDS):
                log.warning("some training runs did not end in time; the store marks them interrupted")
            self._store.close()
            self._stopped.set()

    async def _stop_serving(self, grace: float) -> None:
        await self._health.enter_graceful_shutdown()
        self._jobs.cancel_all("the server is shutting down")
        if self._local is not None:
            await self._local.close(grace)
        await self._server.stop(grace)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (or ``timeout`` passed); True if it has."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS with the server's certificate, requiring client certificates signed by ``tls_client_ca`` when it is set."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    try:
        pair = (config.tls_key.read_bytes(), config.tls_cert.read_bytes())
        client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca is not None else None
    except OSError as error:
        raise ServerStartError(f"cannot read the TLS files: {error}") from None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def connection_age(seconds: float | None) -> list[tuple[str, int]]:
    """gRPC's server options for ``max_connection_age_seconds``: a GOAWAY after about that long (gRPC adds
    ±10% jitter). The age's grace stays gRPC's default, unbounded: a Train or StreamEvaluate call in
    flight runs to its end on the old connection, while new calls go to a new one."""
    return [] if seconds is None else [("grpc.max_connection_age_ms", max(1, round(seconds * 1000)))]


def when_idle(trim: Callable[[], object] | None, regions: SharedRegions | None) -> Callable[[], None]:
    """What the pool does once it falls idle: let go of the shared-memory regions it kept mapped, then give freed memory back."""

    def let_go() -> None:
        if regions is not None:
            regions.clear()
        if trim is not None:
            trim()

    return let_go


def start_server(config: ServerConfig) -> RunningServer:
    """Start serving ``config``; raises ``ServerStartError`` with a message for people if it cannot."""
    try:
        device = resolve_device(config.device)
    except ValueError as error:
        raise ServerStartError(f"device: {error}") from None
    credentials = _credentials(config)
    regions = SharedRegions() if config.shared_memory else None
    trim = malloc_trim() if config.tune_malloc and tune_malloc() else None
    warnings.filterwarnings("ignore", message=UNWRITABLE, category=UserWarning)  # inputs are read, never written
    try:
        opened = ModelStore.open(config.store, weights=config.weights, max_bytes=config.store_max_bytes,
                                 max_models=config.store_max_models, lease_seconds=config.store_lease_seconds)
    except (StoreError, OSError, ValueError) as error:
        raise ServerStartError(f"cannot open the model store: {error}") from None
    metrics = Metrics()
    store = cast(ModelStore, MeteredStore(opened, metrics))
    jobs = TrainingJobs(store, config.max_concurrent_trains, config.max_train_seconds, config.max_pending_events)
    pool = TrimmingPool(config.workers, when_idle(trim, regions), thread_name_prefix="specbuilder-work")
    models = Models(store, device, ModelCache(config.cache_size, config.cache_mb * 1024 * 1024), config.max_params)
    servicer = ModelServicer(config, store, models, jobs, regions, Lanes(config.large_call_flops, observe=metrics.lane), pool, metrics)
    metrics.trainings.set_function(lambda: jobs.running)
    metrics.streams.set_function(lambda: len(servicer.streams))
    loop = _Loop()
    stop_metrics = None
    try:
        if config.metrics_port is not None:
            try:
                stop_metrics = metrics.serve(config.host, config.metrics_port)
            except OSError as error:
                raise ServerStartError(f"cannot serve metrics on {config.host}:{config.metrics_port}: {error}") from None
        server, port, health_servicer, local = loop.run(_serve(config, servicer, credentials, regions))
    except BaseException:
        if stop_metrics is not None:
            stop_metrics()
        loop.close()
        pool.shutdown(wait=False)
        opened.close()
        raise
    log.info("listening on %s:%d (device %s, %r; %s)", config.host, port, device, opened, config.protection)
    return RunningServer(config, port, servicer, loop, server, pool, health_servicer, jobs, opened, local, stop_metrics)


async def _serve(config: ServerConfig, servicer: ModelServicer, credentials: grpc.ServerCredentials | None,
                 regions: SharedRegions | None) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer, LocalSocket | None]:
    """On the loop: the gRPC server (and the local socket) bound and started."""
    access = Access(config.tokens, config.inference_tokens)
    server = grpc.aio.server(
        interceptors=[TokenAuth(access)] if access else [],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a second server sharing it
            *connection_age(config.max_connection_age_seconds),
        ],
    )
    server.add_generic_rpc_handlers((model_service(servicer, servicer.blocking, config.stream_idle_seconds),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = server.add_secure_port(config.address, credentials) if credentials else server.add_insecure_port(config.address)
    except RuntimeError as error:
        raise ServerStartError(f"cannot listen on {config.address}: {error}") from None
    local = None
    if regions is not None and config.local_socket:
        local = LocalSocket(servicer, regions, access=access, max_message_bytes=config.max_message_bytes,
                            max_connections=config.max_streams, idle_seconds=config.stream_idle_seconds)
        await local.start()
        servicer.local_socket = local.path
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer, local
