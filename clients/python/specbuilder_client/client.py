"""``Client``: the service's verbs as Python calls, numpy in and out, no torch.

Every call carries the bearer token (when given) and the client's default deadline (unary
calls only: a stream or a training run has no deadline unless its call gives one). Every
failure is a ``SpecbuilderError`` subclass, raised ``from None``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from os import PathLike
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from specbuilder_client.credentials import Pem, bearer_token, channel_credentials
from specbuilder_client.errors import DeadlineExceeded, SpecbuilderError, from_rpc
from specbuilder_client.local import LocalConnection
from specbuilder_client.local_stream import LocalStream
from specbuilder_client.results import (
    ActivationInfo, Compiled, DatasetInfo, EvalResult, LayerInfo, ModelRecord, ModelSummary, Schemas, Validation, layer_stats, spec_dict,
)
from specbuilder_client.shm import SharedInputs
from specbuilder_client.specs import ModelRef, SpecLike, model_fields, spec_source
from specbuilder_client.streaming import StreamRequests, StreamResult, grpc_responses
from specbuilder_client.targets import channel_target
from specbuilder_client.training import TrainRun
from specbuilder_wire.arrays import to_numpy, to_proto
from specbuilder_wire.heap import keep_large_buffers
from specbuilder_wire.localsocket import METADATA_KEY
from specbuilder_wire.message_bytes import serialize_with_tensor
from specbuilder_wire.results import status_value
from specbuilder_wire.v1 import service_pb2, service_pb2_grpc
from specbuilder_wire.values import config_to_proto

Response = TypeVar("Response")
SERVICE_PATH = f"/{service_pb2.DESCRIPTOR.services_by_name['ModelService'].full_name}"


def evaluate_options(
    statistics: bool, layers: Sequence[str] | None, all_layers: bool, bins: int | None, skip_output: bool, amp: str | None = None
) -> service_pb2.EvaluateOptions:
    """The options of Evaluate and StreamEvaluate (the server checks ``amp``: ``"bf16"``, ``"fp16"`` or None)."""
    return service_pb2.EvaluateOptions(
        skip_output=skip_output, statistics=statistics, layers=list(layers or ()), all_layers=all_layers, bins=bins or 0, amp=amp or ""
    )


def checked_seed(seed: int) -> int:
    """``seed`` if EvaluateRequest.seed (a uint64) can carry it; else a ValueError saying what it takes."""
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be 0 to 2**64 - 1, got {seed}")
    return seed


class Client:
    """A connection to a specbuilder server, or to several replicas over one store.

    ``target`` is ``host:port`` or a gRPC target URI (``dns:///name:port``); several replicas
    are a list of ``ip:port`` addresses or one comma-separated string, and gRPC's
    ``round_robin`` policy spreads the calls over those that are up (``targets.py``).
    ``load_balancing`` names the policy (``round_robin``, ``pick_first``) for one target too,
    such as a DNS name with an address per replica. ``authority`` is the name TLS checks the
    certificates against (several addresses: the first one by default). ``token`` is sent as
    ``authorization: Bearer <token>`` on every call; ``token_file`` reads it from a file instead
    (one line, mode 600: ``specbuilder_wire.token_files``), so it never shows on a command line.
    ``root_certificates`` (PEM bytes, or a path to them) turns on TLS; ``certificate_chain`` and
    ``private_key`` are this client's certificate and key, for a server that requires client
    certificates (``serve --tls-client-ca``; TLS on, trusting the system's roots unless
    ``root_certificates`` is given). ``timeout`` is the default deadline of unary calls, in seconds.
    ``max_message_mb`` bounds messages both ways (the server has its own limit).
    ``shared_memory=True`` makes ``evaluate`` pass inputs through POSIX shared memory — for a
    server on this host started with ``--shared-memory`` — and, unless ``local_socket=False``,
    send those calls, and ``evaluate_stream``'s streams, over the Unix socket the server names,
    which skips gRPC's fixed cost (``local.py``, ``local_stream.py``; gRPC whenever the socket
    cannot be reached). Use it as a context manager, or
    call ``close()``. The first batch sent inline fixes this process's malloc thresholds
    (``specbuilder_wire.heap.keep_large_buffers``), so that multi-megabyte requests reuse their buffers.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        token: str | None = None,
        root_certificates: Pem | None = None,
        timeout: float | None = None,
        max_message_mb: int = 64,
        shared_memory: bool = False,
        load_balancing: str | None = None,
        authority: str | None = None,
        local_socket: bool = True,
        token_file: str | PathLike[str] | None = None,
        certificate_chain: Pem | None = None,
        private_key: Pem | None = None,
    ) -> None:
        where = channel_target(target, load_balancing, authority)
        token = bearer_token(token, token_file)
        credentials = channel_credentials(root_certificates, certificate_chain, private_key)
        limit = max_message_mb * 1024 * 1024
        options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit), *where.options]
        if credentials is not None:
            self._channel = grpc.secure_channel(where.target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(where.target, options=options)
        self._stub = service_pb2_grpc.ModelServiceStub(self._channel)
        # Evaluate and StreamEvaluate with requests already serialized, tensors copied once (serialize_with_tensor)
        self._evaluate_bytes = self._channel.unary_unary(
            f"{SERVICE_PATH}/Evaluate", request_serializer=None, response_deserializer=service_pb2.EvaluateResponse.FromString)
        self._stream_bytes = self._channel.stream_stream(
            f"{SERVICE_PATH}/StreamEvaluate", request_serializer=None, response_deserializer=service_pb2.StreamEvaluateResponse.FromString)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.shared_memory = shared_memory
        self._shared = SharedInputs()
        self._token = token
        self._use_local_socket = local_socket
        self._local: LocalConnection | None = None
        """The connection to the server's local socket, once a shared-memory answer has named it."""
        self._socket_path: str | None = None
        """The server's local socket, once an answer has named it and it could be reached; "" once a stream's
        headers named none (the streams after it go over gRPC without asking again)."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and the local socket's connection, and unlink the shared-memory region."""
        self._drop_local()
        self._shared.close()
        self._channel.close()

    def _call(self, method: Callable[..., Response], request: Any, timeout: float | None) -> Response:
        try:
            return method(request, timeout=timeout if timeout is not None else self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc(error) from None

    def validate(self, spec: SpecLike, *, timeout: float | None = None) -> Validation:
        """Check a spec. An invalid spec is an answer (``valid`` False, ``problems`` at their paths), not an error."""
        return Validation.from_proto(self._call(self._stub.ValidateSpec, service_pb2.ValidateSpecRequest(spec=spec_source(spec)), timeout))

    def compile(self, spec: SpecLike, style: str = "sequential", code: bool = False, *, timeout: float | None = None) -> Compiled:
        """Compile a spec on the server: its layer table, shapes, parameter counts, and PyTorch source with ``code=True``."""
        request = service_pb2.CompileSpecRequest(spec=spec_source(spec), style=style, include_code=code)
        return Compiled.from_proto(self._call(self._stub.CompileSpec, request, timeout), code=code)

    def evaluate(
        self,
        model: ModelRef,
        x: np.ndarray,
        *,
        statistics: bool = False,
        layers: Sequence[str] | None = None,
        all_layers: bool = False,
        bins: int | None = None,
        skip_output: bool = False,
        shared_memory: bool | None = None,
        timeout: float | None = None,
        amp: str | None = None,
        seed: int = 0,
    ) -> EvalResult:
        """Run one batch ``x`` ([N, *input_shape]) through a spec or a stored model's id.

        A spec's weights are initialized from ``seed``: the same spec, seed and input give the same
        outputs on every server (a stored model has its own weights and ignores it). ``statistics``
        adds per-layer activation statistics (every activation layer, or the modules named in
        ``layers``, or every module with ``all_layers``). ``shared_memory`` overrides the client's
        choice for this call. ``amp`` (``"bf16"`` or ``"fp16"``) runs the
        forward in mixed precision: outputs come back in that dtype (bfloat16 widened to float32
        here), statistics are still computed in float32.
        """
        request = service_pb2.EvaluateRequest(
            options=evaluate_options(statistics, layers, all_layers, bins, skip_output, amp), seed=checked_seed(seed), **model_fields(model),
        )
        if self.shared_memory if shared_memory is None else shared_memory:
            with self._shared.place(x) as tensor:
                request.input.CopyFrom(tensor)
                response = self._evaluate_shared(request, timeout)
        else:
            keep_large_buffers()
            response = self._call(self._evaluate_bytes, serialize_with_tensor(request, "input", x), timeout)
        outputs = to_numpy(response.output, "output") if response.HasField("output") else None
        return EvalResult(outputs=outputs, stats=layer_stats(response.stats), compute_seconds=response.compute_seconds)

    def shared_array(self, shape: Sequence[int], dtype: npt.DTypeLike = np.float32) -> np.ndarray:
        """A zeroed array in shared memory that ``evaluate`` sends without copying it.

        Fill it (read a batch straight into it) and evaluate it, or any contiguous view of it such as
        ``array[:n]``, through shared memory (``shared_memory=True`` on the client or the call):
        only its region's name and offset travel. The region lives as long as any view of the
        array; after ``close`` the array stays usable here but can no longer be sent.
        """
        return self._shared.array(tuple(shape), dtype)

    @property
    def local_socket(self) -> str | None:
        """The server's local socket that this client's shared-memory calls go to; None while they go over gRPC."""
        return self._local.path if self._local is not None else None

    def _evaluate_shared(self, request: service_pb2.EvaluateRequest, timeout: float | None) -> service_pb2.EvaluateResponse:
        """A shared-memory Evaluate: on the local socket once the server has named it, else over gRPC.
        Runs with the region held (``SharedInputs.place``), which also keeps calls off the connection one at a time."""
        timeout = timeout if timeout is not None else self.timeout
        if self._local is not None:
            try:
                return self._on_local(request, timeout)
            except OSError:  # the connection broke (the server stopped, or closed it): the call goes to gRPC
                pass
        try:
            response, call = self._stub.Evaluate.with_call(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            path = dict(error.trailing_metadata() or ()).get(METADATA_KEY) if isinstance(error, grpc.Call) else None
            if path is None or not self._connect_local(path):  # shared memory is refused on gRPC: the local socket takes it
                raise from_rpc(error) from None
            try:
                return self._on_local(request, timeout)
            except OSError:
                raise from_rpc(error) from None
        path = dict(call.trailing_metadata() or ()).get(METADATA_KEY)
        if path:
            self._connect_local(path)
        return response

    def _on_local(self, request: service_pb2.EvaluateRequest, timeout: float | None) -> service_pb2.EvaluateResponse:
        """The call on the local connection; a connection that broke or timed out is dropped."""
        assert self._local is not None
        try:
            return self._local.evaluate(request, timeout)
        except (DeadlineExceeded, OSError):  # after a timeout its answer may still come: the connection cannot be used again
            self._drop_local()
            raise

    def _connect_local(self, path: str) -> bool:
        """Connect to the server's local socket at ``path`` (unless local sockets are off); False where it cannot be reached."""
        if self._use_local_socket:
            self._local = self._open_local(path)
        return self._local is not None

    def _open_local(self, path: str) -> LocalConnection | None:
        """A new connection to the server's local socket at ``path``; None, and local sockets off for this client, where it cannot be reached."""
        try:
            connection = LocalConnection(path, self._token)
        except (OSError, SpecbuilderError):  # not reachable from here (another host, a container): gRPC it is
            self._use_local_socket = False
            return None
        self._socket_path = path
        return connection

    def _drop_local(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None

    def evaluate_stream(
        self,
        model: ModelRef,
        batches: Iterable[np.ndarray],
        *,
        statistics: bool = False,
        layers: Sequence[str] | None = None,
        all_layers: bool = False,
        bins: int | None = None,
        skip_output: bool = False,
        timeout: float | None = None,
        amp: str | None = None,
        seed: int = 0,
    ) -> StreamResult:
        """Run many batches through one model in one call; memory stays flat on both sides.

        ``batches`` is read lazily (a generator is fine), on a thread of the stream's own, a few
        batches ahead of the outputs. Iterate the result for the outputs, in order, then read
        ``.summary`` (statistics aggregate over the whole stream). On a shared-memory client the
        stream goes to the server's local socket when it can be reached, each batch through a
        region of a small ring the stream reuses (an array from ``shared_array`` is sent where
        it lies: leave it unchanged until its output has come); otherwise it goes over gRPC,
        batches inline. ``amp`` and ``seed`` as for ``evaluate``.
        """
        start = service_pb2.StreamEvaluateStart(
            options=evaluate_options(statistics, layers, all_layers, bins, skip_output, amp), seed=checked_seed(seed), **model_fields(model),
        )
        if self.shared_memory and self._use_local_socket:
            if self._socket_path is None:
                return self._stream_finding_socket(start, batches, timeout)
            connection = self._open_local(self._socket_path) if self._socket_path else None
            if connection is not None:
                return self._local_stream(connection, start, batches, timeout)
        requests = StreamRequests(start, batches)
        call = self._stream_bytes(iter(requests), timeout=timeout, metadata=self._metadata)
        return StreamResult(grpc_responses(call), requests, call.cancel)

    def _stream_finding_socket(self, start: service_pb2.StreamEvaluateStart, batches: Iterable[np.ndarray],
                               timeout: float | None) -> StreamResult:
        """A stream over gRPC, unless the call's headers name the server's local socket and it can be reached:
        then there, and the gRPC call, which sent only its start, is cancelled."""
        requests = StreamRequests(start, batches, routed=True)
        call = self._stream_bytes(iter(requests), timeout=timeout, metadata=self._metadata)
        path = dict(call.initial_metadata() or ()).get(METADATA_KEY)
        if not path:
            self._socket_path = ""
        connection = self._open_local(path) if path else None
        if connection is not None:
            if requests.route(False):
                call.cancel()
                return self._local_stream(connection, start, batches, timeout)
            connection.close()  # the requests stopped waiting for the answer: the batches go over gRPC
        requests.route(True)
        return StreamResult(grpc_responses(call), requests, call.cancel)

    def _local_stream(self, connection: LocalConnection, start: service_pb2.StreamEvaluateStart, batches: Iterable[np.ndarray],
                      timeout: float | None) -> StreamResult:
        stream = LocalStream(connection, self._shared, start, batches, timeout)
        return StreamResult(stream.responses(), stream, stream.cancel)

    def train(
        self,
        spec: SpecLike,
        data: str | tuple[np.ndarray, np.ndarray] = "spirals",
        *,
        name: str | None = None,
        progress: bool = False,
        timeout: float | None = None,
        **config: Any,
    ) -> TrainRun:
        """Start training ``spec`` on a built-in dataset (by name) or on arrays ``(x, y)``.

        ``config`` takes TrainConfig's fields (epochs, batch_size, lr, optimizer, loss, seed, ...);
        a choice with parameters is a dict (``optimizer={"type": "sgd", "momentum": 0.9}``).
        The server checks them. Iterate the returned run for events, or call ``.result()``;
        ``progress=True`` shows a progress bar (it needs tqdm: ``specbuilder-client[progress]``). ``timeout`` bounds the whole run.
        """
        request = service_pb2.TrainRequest(
            spec=spec_source(spec), name=name or "",
            config=config_to_proto(config),
        )
        if isinstance(data, str):
            request.dataset = data
        else:
            x, y = data
            request.arrays.x.CopyFrom(to_proto(x))
            request.arrays.y.CopyFrom(to_proto(y))
        return TrainRun(self._stub.Train(request, timeout=timeout, metadata=self._metadata), progress=progress)

    def list_models(self, status: str | None = None, *, limit: int | None = None, timeout: float | None = None) -> list[ModelSummary]:
        """Stored models and runs, newest first, as summaries (``get_model`` has the rest); ``status`` filters,
        ``limit`` stops after that many. Pages are fetched as they are needed, each call within ``timeout``."""
        summaries: list[ModelSummary] = []
        request = service_pb2.ListModelsRequest(status=status_value(status) if status else 0)
        while limit is None or len(summaries) < limit:
            request.page_size = min(limit - len(summaries), 2**31 - 1) if limit is not None else 0  # the server caps and defaults it
            page = self._call(self._stub.ListModels, request, timeout)
            summaries += [ModelSummary.from_proto(m) for m in page.models]
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        return summaries

    def get_model(self, model_id: str, *, timeout: float | None = None) -> ModelRecord:
        """One stored model or run, with its history and statistics."""
        return ModelRecord.from_proto(self._call(self._stub.GetModel, service_pb2.GetModelRequest(model_id=model_id), timeout))

    def delete_model(self, model_id: str, *, timeout: float | None = None) -> None:
        """Delete a stored model or finished run."""
        self._call(self._stub.DeleteModel, service_pb2.DeleteModelRequest(model_id=model_id), timeout)

    def export_model(self, model_id: str, *, timeout: float | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A stored model's spec (its JSON form as a dict: ``ModelSpec.model_validate(spec)``) and its
        state_dict as writable numpy arrays (for ``torch.from_numpy``)."""
        response = self._call(self._stub.ExportModel, service_pb2.ExportModelRequest(model_id=model_id), timeout)
        weights = {name: np.array(to_numpy(tensor, f"weights[{name!r}]")) for name, tensor in sorted(response.weights.items())}
        return spec_dict(response.spec), weights

    def activations(self, *, timeout: float | None = None) -> list[ActivationInfo]:
        """The server's activation registry: names, parameters, ranges, formulas, flat regions."""
        response = self._call(self._stub.ListActivations, service_pb2.ListActivationsRequest(), timeout)
        return [ActivationInfo.from_proto(a) for a in response.activations]

    def layers(self, *, timeout: float | None = None) -> list[LayerInfo]:
        """Every other layer type of the spec language: names, parameters (kinds, defaults, bounds, which are inferred), torch class."""
        response = self._call(self._stub.ListLayers, service_pb2.ListLayersRequest(), timeout)
        return [LayerInfo.from_proto(layer) for layer in response.layers]

    def datasets(self, *, timeout: float | None = None) -> list[DatasetInfo]:
        """The built-in datasets ``train`` takes by name: input shape, target kind, classes, rows."""
        response = self._call(self._stub.ListDatasets, service_pb2.ListDatasetsRequest(), timeout)
        return [DatasetInfo.from_proto(dataset) for dataset in response.datasets]

    def schema(self, *, timeout: float | None = None) -> Schemas:
        """The JSON Schemas of a spec and of a training configuration."""
        return Schemas.from_proto(self._call(self._stub.GetSchema, service_pb2.GetSchemaRequest(), timeout))


__all__ = ["Client"]
