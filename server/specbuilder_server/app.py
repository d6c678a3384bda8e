"""Starting and stopping a server: ``start_server(config)`` returns a ``RunningServer``.

Wires the parts together: the model store, the model cache, the training pool, the shared-memory
regions and the local socket (with ``--shared-memory``), the servicer, the standard health service (SERVING overall
and per service) and server reflection, the token interceptor when a token is set, the
request-parsing interceptor (``decoding``), TLS when a certificate is given, and the message
size limits, and the connections' age limit when one is set. ``RunningServer.stop(grace)`` is
the graceful stop (SIGTERM in ``specbuilder serve``): health turns NOT_SERVING, running
trainings are cancelled and recorded, in-flight calls get ``grace`` seconds to finish, then the
store is closed.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from specbuilder.devices import resolve_device
from specbuilder.regions import SharedRegions
from specbuilder.store import ModelStore, StoreError
from specbuilder.v1 import service_pb2, service_pb2_grpc
from specbuilder_server.auth import TokenAuth
from specbuilder_server.config import ServerConfig
from specbuilder_server.decoding import ParseRequests
from specbuilder_server.jobs import TrainingJobs
from specbuilder_server.local import LocalSocket
from specbuilder_server.models import Models
from specbuilder_server.pool import TrimmingPool
from specbuilder_server.servicer import ModelServicer
from specbuilder_server.tensors import UNWRITABLE
from specbuilder_server.tuning import malloc_trim, tune_malloc

log = logging.getLogger("specbuilder_server")

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
"""``specbuilder.v1.ModelService``: the name health checks and reflection know it by."""
RECORD_SECONDS = 10.0
"""After the grace period, how long a stop waits for cancelled trainings to be recorded."""


class ServerStartError(Exception):
    """The server could not start (a port in use, unreadable TLS files, a device that is not there)."""


class RunningServer:
    """A started server: where it listens, and how to stop it."""

    def __init__(self, config: ServerConfig, server: grpc.Server, executor: ThreadPoolExecutor, port: int,
                 health_servicer: health.HealthServicer, jobs: TrainingJobs, store: ModelStore, local: LocalSocket | None) -> None:
        self.config = config
        self.port = port
        """The bound port (the free one picked when the config says 0)."""
        self._server = server
        self._executor = executor
        self._health = health_servicer
        self._jobs = jobs
        self._store = store
        self.local_socket = local.path if local is not None else None
        """The local socket's path (``--shared-memory``), None without one."""
        self._local = local
        self._stopped = threading.Event()
        self._stopping = threading.Lock()

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
            self._health.enter_graceful_shutdown()
            self._jobs.cancel_all("the server is shutting down")
            if self._local is not None:
                self._local.close(grace)
            self._server.stop(grace).wait()
            self._executor.shutdown(wait=False)
            if not self._jobs.wait(RECORD_SECONDS):
                log.warning("some training runs did not end in time; the store marks them interrupted")
            self._store.close()
            self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (or ``timeout`` passed); True if it has."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    try:
        pair = (config.tls_key.read_bytes(), config.tls_cert.read_bytes())
    except OSError as error:
        raise ServerStartError(f"cannot read the TLS files: {error}") from None
    return grpc.ssl_server_credentials([pair])


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
        store = ModelStore(config.store)
    except (StoreError, OSError) as error:
        raise ServerStartError(f"cannot open the model store at {config.store}: {error}") from None
    jobs = TrainingJobs(store, config.max_concurrent_trains, config.max_train_seconds)
    executor = (ThreadPoolExecutor(config.workers, thread_name_prefix="specbuilder-rpc") if trim is None and regions is None
                else TrimmingPool(config.workers, when_idle(trim, regions), thread_name_prefix="specbuilder-rpc"))
    server = grpc.server(
        executor,
        interceptors=[*([TokenAuth(config.token)] if config.token else []), ParseRequests()],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a second server sharing it
            *connection_age(config.max_connection_age_seconds),
        ],
    )
    servicer = ModelServicer(config, store, Models(store, device, config.cache_size, config.max_params), jobs, regions)
    local = None
    if isinstance(executor, TrimmingPool) and regions is not None and config.local_socket:
        local = LocalSocket(servicer.Evaluate, token=config.token, max_message_bytes=config.max_message_bytes,
                            max_connections=config.workers, working=executor.working)
        servicer.local_socket = local.path
    service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True, experimental_thread_pool=executor)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = server.add_secure_port(config.address, credentials) if credentials else server.add_insecure_port(config.address)
    except RuntimeError as error:
        if local is not None:
            local.close(0)
        executor.shutdown(wait=False)
        store.close()
        raise ServerStartError(f"cannot listen on {config.address}: {error}") from None
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("listening on %s:%d (device %s, store %s)", config.host, port, device, config.store)
    return RunningServer(config, server, executor, port, health_servicer, jobs, store, local)
