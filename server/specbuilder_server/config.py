"""``ServerConfig``: everything ``specbuilder serve`` can be told, checked before the server starts.

The command line fills it from flags; tests and the demo build it directly. Every limit a
client can run into lives here, so what the server refuses is decided in one place.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from specbuilder.spec import DEFAULT_MAX_PARAMS

DEFAULT_PORT = 50051
Token = Annotated[str, Field(min_length=1, pattern=r"\S")]
"""A bearer token: not empty, not only spaces (an empty token would read as "no token")."""
MAX_MESSAGE_MB = 2047
"""gRPC's message length is a signed 32-bit number of bytes."""


def default_store() -> Path:
    """``$SPECBUILDER_STORE``, else ``$XDG_DATA_HOME/specbuilder/models`` (``~/.local/share/...``)."""
    if os.environ.get("SPECBUILDER_STORE"):
        return Path(os.environ["SPECBUILDER_STORE"])
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "specbuilder" / "models"


class ServerConfig(BaseModel):
    """How the server listens, whom it lets in, and how much it will do for one client."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 or [::] listens on every interface")
    insecure: bool = Field(False, description="allow a non-loopback host without a token (anyone who reaches the port may call every RPC)")
    port: Annotated[int, Field(ge=0, le=65535, description="port to bind; 0 picks a free one")] = DEFAULT_PORT
    store: Path | str = Field(default_factory=default_store, description=(
        "model store: a directory (created if missing) or a postgresql:// URL (specbuilder.store.ModelStore.open)"))
    weights: str | None = Field(None, description="a PostgreSQL store's weights: s3://BUCKET/PREFIX or a directory every replica mounts")
    store_lease_seconds: Annotated[float, Field(gt=0, description=(
        "a PostgreSQL store's run lease: a dead replica's runs read interrupted after this long"))] = 30.0
    store_max_bytes: Annotated[int | None, Field(ge=1, description=(
        "bytes of weights the store may hold; past it saves and trainings are refused (give every replica sharing the store the same)"))] = None
    store_max_models: Annotated[int | None, Field(ge=1, description="models and runs the store may hold; past it new ones are refused")] = None
    tokens: tuple[Token, ...] = Field((), repr=False, description=(
        "full-access bearer tokens: with any token set, every RPC but health must carry one (several: any is accepted, for rotation)"))
    inference_tokens: tuple[Token, ...] = Field((), repr=False, description=(
        "bearer tokens that may only read and evaluate (roles.ROLES); other RPCs answer PERMISSION_DENIED"))
    tls_cert: Path | None = Field(None, description="PEM certificate chain; with tls_key, the server speaks TLS")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(None, description=(
        "PEM certificates of the CAs that sign client certificates: with it, TLS requires every client to present one (mTLS)"))
    max_message_mb: Annotated[int, Field(ge=1, le=MAX_MESSAGE_MB, description="largest message, either direction")] = 64
    max_params: Annotated[int, Field(ge=1, description="specs with more parameters are refused")] = DEFAULT_MAX_PARAMS
    max_batch_elements: Annotated[int, Field(ge=1, description="batch size times the largest per-sample layer output")] = 50_000_000
    max_concurrent_trains: Annotated[int, Field(ge=1, description="training runs at once; more are refused")] = 2
    max_train_seconds: Annotated[float | None, Field(gt=0, description="a training run is cancelled after this long")] = None
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N': where models run")
    shared_memory: bool = Field(False, description=(
        "accept tensors in POSIX shared memory from same-host clients, on the local socket, where the region must belong "
        "to the caller's own user"))
    shared_memory_over_grpc: bool = Field(False, description=(
        "with shared_memory, single-tenant hosts only: also accept shared-memory references on gRPC calls, where the "
        "caller's user cannot be known, so the server reads any region its own user can"))
    local_socket: bool = Field(True, description=(
        "with shared_memory: also answer Evaluate on a Unix socket that same-host clients find in the trailing metadata of "
        "their shared-memory calls (specbuilder_wire.localsocket)"))
    cache_size: Annotated[int, Field(ge=1, description="compiled and loaded models kept ready")] = 32
    cache_mb: Annotated[int, Field(ge=1, description="megabytes of parameters and buffers the kept models may hold in all")] = 1024
    workers: Annotated[int, Field(ge=2, description="threads for blocking work (parsing, compiling, the store); calls waiting for a message hold none")] = 16
    max_flops_per_call: Annotated[int, Field(ge=1, description="refuse an evaluation whose estimated cost (2 x multiply-adds x rows) is larger")] = 10**12
    max_compute_seconds: Annotated[float, Field(gt=0, description=(
        "stop a call's compute after this long (RESOURCE_EXHAUSTED); in a forward merged with other calls', its rows' share of the time counts"))] = 60.0
    large_call_flops: Annotated[int, Field(ge=1, description=(
        "calls estimated above this many FLOPs compute in a lane of their own, so smaller calls never wait behind them"))] = 2 * 10**9
    dynamic_batching: bool = Field(True, description=(
        "merge concurrent Evaluate calls on the same model, with the same input dtype and amp, into one forward (batching.py)"))
    max_batch_rows: Annotated[int, Field(ge=1, description=(
        "rows one merged forward takes at most (a call with more computes alone)"))] = 1024
    batch_delay_us: Annotated[int, Field(ge=0, le=10_000_000, description=(
        "microseconds a call waits for others to merge with; 0: only calls that queued while its lane was busy merge"))] = 0
    stream_idle_seconds: Annotated[float, Field(gt=0, description=(
        "close a stream that sent no message, or read none of the server's, for this long (DEADLINE_EXCEEDED)"))] = 60.0
    max_streams: Annotated[int, Field(ge=1, description="open StreamEvaluate and Train calls in all; more are refused")] = 256
    max_streams_per_connection: Annotated[int, Field(ge=1, description="open StreamEvaluate and Train calls on one connection")] = 32
    max_pending_events: Annotated[int, Field(ge=1, description=(
        "a training run's events its Train call has not sent yet; past this the client is not reading, and the run is cancelled"))] = 4096
    grace_seconds: Annotated[float, Field(ge=0, description="how long in-flight calls may finish when stopping")] = 10.0
    max_connection_age_seconds: Annotated[float | None, Field(gt=0, description=(
        "close each client connection after about this long (calls in flight finish first), so clients reconnect and "
        "re-resolve the server's name: new replicas get traffic"))] = None
    metrics_port: Annotated[int | None, Field(ge=0, le=65535, description=(
        "serve Prometheus metrics at http://HOST:PORT/metrics (0 picks a free port); None: not served"))] = None
    tune_malloc: bool = Field(True, description="raise glibc's mmap/trim thresholds so multi-MB messages reuse memory; trim it when idle")

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both (TLS) or neither (plaintext)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs TLS: give tls_cert and tls_key too (client certificates are checked in the TLS handshake)")
        return self

    @model_validator(mode="after")
    def _one_role_per_token(self) -> ServerConfig:
        if set(self.tokens) & set(self.inference_tokens):
            raise ValueError("a token is given both as a full-access token and as an inference token: give each token one role")
        return self

    @model_validator(mode="after")
    def _closed_by_default(self) -> ServerConfig:
        if not self.authenticates and not self.insecure and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host} is reachable from other machines and no token is set: give a token (--token-file, "
                "--token or $SPECBUILDER_TOKEN) or client certificates (--tls-client-ca), bind 127.0.0.1, or pass "
                "--insecure to serve everyone who reaches the port")
        if self.shared_memory_over_grpc and not self.shared_memory:
            raise ValueError("shared_memory_over_grpc needs shared_memory")
        return self

    @property
    def authenticates(self) -> bool:
        """Whether callers must prove who they are: a token, or a client certificate."""
        return bool(self.tokens or self.inference_tokens) or self.tls_client_ca is not None

    @property
    def protection(self) -> str:
        """What protects the server, in words, for its start-up line."""
        parts = ["TLS" if self.tls_cert else "plaintext"]
        if self.tls_client_ca is not None:
            parts.append("client certificate required")
        if self.tokens or self.inference_tokens:
            parts.append(f"token required ({len(set(self.tokens))} full access, {len(set(self.inference_tokens))} inference)")
        else:
            parts.append("NO TOKEN: every caller " + ("with a client certificate " if self.tls_client_ca else "") + "is trusted")
        if self.shared_memory_over_grpc:
            parts.append("shared memory over gRPC read with the server's rights (single-tenant)")
        return ", ".join(parts)

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def address(self) -> str:
        """``host:port`` as gRPC binds it (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 possibly bracketed) is this machine's loopback only."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
