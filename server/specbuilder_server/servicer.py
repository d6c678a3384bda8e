"""``ModelService``: each RPC reads its request into core objects, calls the core, answers in protobuf.

No model logic lives here: validation is ``parse_spec``, compiling and caching ``model_cache``,
training ``train_events`` (through ``jobs``), storage ``ModelStore``. Every method is a coroutine
on the server's event loop wrapped by ``errors.handled``, so whatever goes wrong becomes a proper
gRPC status. A call holds no thread while it waits (for a message, for its turn, for a slow
reader): blocking work (parsing large specs, compiling, the store) runs on the worker threads
(``blocking``), forwards and statistics in a compute lane (``compute_lanes``; Evaluate calls through
``batching``, which merges concurrent ones), each within a ``Budget`` (deadline, cancel, compute
seconds), after the call's estimated cost was checked against the server's limit. Streams are capped in number, in all and per connection, and one
that neither sends nor reads for ``stream_idle_seconds`` is ended; a stream's next batches are
read and started while the current one computes (``read_ahead``), and the same stream body serves
gRPC and the local socket (``StreamEnds``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import grpc
import grpc.aio

from specbuilder.codegen import generate_code
from specbuilder.datasets import DataError
from specbuilder.errors import SpecError
from specbuilder.proto import spec_to_proto
from specbuilder.spec import STYLES, ModelSpec
from specbuilder.store import ModelStore
from specbuilder_server import catalog, request_fields, responses
from specbuilder_server.batching import Batcher, Call
from specbuilder_server.compute_budget import Budget
from specbuilder_server.compute_lanes import Lanes
from specbuilder_server.config import ServerConfig
from specbuilder_server.errors import ClientGone, RequestError, exhausted, handled, invalid, reader_stalled
from specbuilder_server.forward_pass import Pass, WireBatch, run_alone
from specbuilder_server.jobs import EVENT_INTERVAL, RunFailed, TrainingJobs
from specbuilder_server.metrics import Metrics
from specbuilder_server.model_cache import Models, Ready
from specbuilder_server.raw_handlers import Incoming, Received
from specbuilder_server.read_ahead import ReadAhead, Started
from specbuilder_server.stream_slots import StreamSlots
from specbuilder_server.worker_pool import TrimmingPool
from specbuilder_wire import localsocket
from specbuilder_wire.arrays import to_proto
from specbuilder_wire.regions import RegionReader, SharedRegions
from specbuilder_wire.v1 import service_pb2, tensor_pb2

DEADLINE_SLACK = 0.25
"""A call that ends this close to its deadline ended by it: the client's own timer usually cancels it
a moment before the server's deadline (which is later by the transit time) passes."""
STREAM_AHEAD = 2
"""Batches of a stream started (read, checked, handed to a compute lane) and not yet answered: the one
computing and the next, so the lane goes on to it without waiting for the event loop (``read_ahead``)."""
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class StreamEnds:
    """What a StreamEvaluate call is served through, on gRPC or the local socket."""

    receive: Callable[[], Awaitable[Received[service_pb2.StreamEvaluateRequest] | None]]
    """The next message, None once the client has closed its side; raises ``RequestError`` (idle, malformed) or ``ClientGone``."""
    send: Callable[[service_pb2.StreamEvaluateResponse], Awaitable[None]]
    """Write one answer; raises ``RequestError`` for a client that reads none for too long, ``ClientGone`` when the call is over."""
    regions: Callable[[str, tensor_pb2.Tensor], RegionReader | None]
    """Where the batch at a path reads shared memory from (None: nowhere); raises to refuse it."""
    budget: Callable[[], Budget]
    """A batch's compute budget."""
    peer: str
    """The connection, for the per-connection stream cap."""


class ModelServicer:
    """The service over one store, one model cache, one pool of training jobs and the shared-memory regions it reads."""

    def __init__(self, config: ServerConfig, store: ModelStore, models: Models, jobs: TrainingJobs, regions: SharedRegions | None,
                 lanes: Lanes, pool: TrimmingPool, metrics: Metrics) -> None:
        self._config = config
        self._store = store
        self._models = models
        self._jobs = jobs
        self._regions = regions
        """Where shared-memory batches are read from; None: they are refused (no ``--shared-memory``)."""
        self.lanes = lanes
        """Where forwards and statistics compute: a small and a large lane."""
        self._batcher = Batcher(lanes, config, metrics)
        self._pool = pool
        self.metrics = metrics
        self.streams = StreamSlots(config.max_streams, config.max_streams_per_connection)
        self.local_socket: str | None = None
        """The local socket's path (``local_socket``), named to clients in the trailing metadata of shared-memory Evaluate calls."""

    # -- helpers ---------------------------------------------------------------------------

    async def blocking(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the worker threads, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def _compute(self, flops: int, budget: Budget, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in its compute lane (``_awaited``)."""
        return await self._awaited(asyncio.wrap_future(self.lanes.for_cost(flops).submit(fn, *args)), budget)

    async def _awaited(self, compute: asyncio.Future[T], budget: Budget) -> T:
        """What a call's compute ends with; a call that ends meanwhile (cancelled, deadline) stops its compute."""
        self._pool.track(compute)
        try:
            return await compute
        except asyncio.CancelledError:
            budget.cancel("the client cancelled the call")
            compute.cancel()  # a compute not started yet never starts
            raise

    def budget(self, context: grpc.aio.ServicerContext | None) -> Budget:
        """The compute budget of a call: its deadline (none without a context) and the server's cap on compute seconds."""
        remaining = context.time_remaining() if context is not None else None
        return Budget(None if remaining is None else time.monotonic() + remaining, self._config.max_compute_seconds)

    def _check_cost(self, spec: ModelSpec, rows: int, path: str) -> int:
        """The estimated FLOPs of ``rows`` samples through ``spec``; RESOURCE_EXHAUSTED over the server's limit."""
        flops = spec.flops(rows)
        limit = self._config.max_flops_per_call
        if flops > limit:
            per_row = max(spec.flops(1), 1)
            raise exhausted(
                f"{path}: {rows:,} samples through this model cost about {flops:.3g} FLOPs, over this server's limit of "
                f"{limit:.3g} per call (max_flops_per_call); send at most {max(limit // per_row, 1):,} samples per call")
        return flops

    def _grpc_regions(self, tensors: Mapping[str, tensor_pb2.Tensor]) -> SharedRegions | None:
        """Where a gRPC call's shared-memory tensors (``tensors``, by path) are read from. gRPC cannot tell the
        caller's user, so unless the operator trusts every caller (``shared_memory_over_grpc``) a shared-memory
        tensor is refused, naming the local socket, where the caller's user is checked."""
        if self._regions is None or self._config.shared_memory_over_grpc:
            return self._regions
        for path, tensor in tensors.items():
            if tensor.WhichOneof("payload") == "shared_memory":
                metadata = ((localsocket.METADATA_KEY, self.local_socket),) if self.local_socket else ()
                where = "send it there (its path is in this status's trailing metadata)" if self.local_socket else "this server has no local socket"
                raise RequestError(grpc.StatusCode.PERMISSION_DENIED, (
                    f"{path}.shared_memory: shared memory is read only on the server's local socket, where the caller's user is "
                    f"checked against the region's owner; gRPC cannot tell who the caller is; {where}"), metadata=metadata)
        return None

    async def _ready(self, request: Any, path: str = "", check: Callable[[ModelSpec], object] | None = None) -> Ready:
        """The model a request names (``spec`` or ``model_id``, a oneof called ``model``; its fields' paths start with
        ``path``): a spec with its weights initialized from the request's ``seed``, a stored model with its own.
        ``check`` sees a spec sent with the request before it is compiled."""
        kind = request.WhichOneof("model")
        if kind == "spec":
            ready = self._models.cache.by_source(self._models.source_key(request.spec, request.seed))
            return ready or await self.blocking(self._models.for_source, request.spec, request.seed, f"{path}spec", check)
        if kind == "model_id":
            return await self.blocking(self._models.stored, request_fields.model_id(request.model_id, f"{path}model_id"))
        raise invalid(f"{path}model", "is required: set spec (compiled and cached by its hash and seed) or model_id (a stored model)", "missing")

    async def evaluate(self, received: Received[service_pb2.EvaluateRequest], regions: RegionReader | None,
                       budget: Budget) -> service_pb2.EvaluateResponse:
        """Evaluate, for gRPC and the local socket alike; raises what the call fails with."""
        request = received.message
        batch = WireBatch(request.input, received.data, regions, "input")
        ready = await self._ready(request, check=lambda spec: self._check_cost(spec, batch.rows, "input"))  # refused before it is compiled
        options = request_fields.options_of(request.options, ready.spec)
        if not request.HasField("input"):
            raise invalid("input", f"is required: a batch of shape [N, {', '.join(map(str, ready.spec.input_shape))}]", "missing")
        flops = self._check_cost(ready.spec, batch.rows, "input")
        response = service_pb2.EvaluateResponse()
        call = Call(ready, options, batch, response.output, budget, flops)
        stats, seconds = await self._awaited(self._batcher.submit(call), budget)
        response.stats.extend(layer.to_proto() for layer in stats)
        response.compute_seconds = seconds
        return response

    async def _send(self, context: grpc.aio.ServicerContext, message: Any) -> None:
        """Write one message of a response stream, giving a reader that takes none of them ``stream_idle_seconds``;
        ``ClientGone`` if the call ended under the write."""
        write = asyncio.ensure_future(context.write(message))
        try:
            done, _ = await asyncio.wait((write,), timeout=self._config.stream_idle_seconds)
        except asyncio.CancelledError:
            write.cancel()
            raise
        if not done:  # a write waits on the reader's flow control, and cancelling it must not wait for the reader too
            write.cancel()
            raise reader_stalled(self._config.stream_idle_seconds)
        if write.exception() is not None:  # gRPC's failed write of a call that is over
            raise ClientGone(str(write.exception()))

    # -- specs -----------------------------------------------------------------------------

    @handled
    async def ValidateSpec(self, request: service_pb2.ValidateSpecRequest, context: grpc.aio.ServicerContext) -> service_pb2.ValidateSpecResponse:
        return await self.blocking(self._validate, request)

    def _validate(self, request: service_pb2.ValidateSpecRequest) -> service_pb2.ValidateSpecResponse:
        try:
            spec = request_fields.parse_source(request.spec, "spec", self._config.max_params)
        except SpecError as error:  # an invalid spec is an answer, not an error
            return service_pb2.ValidateSpecResponse(valid=False, violations=[
                service_pb2.FieldViolation(path=p.path, message=p.message, type=p.type) for p in error.problems
            ])
        return service_pb2.ValidateSpecResponse(
            valid=True, spec=spec_to_proto(spec), spec_hash=spec.spec_hash(), num_params=spec.num_params, output_shape=spec.output_shape,
        )

    @handled
    async def CompileSpec(self, request: service_pb2.CompileSpecRequest, context: grpc.aio.ServicerContext) -> service_pb2.CompileSpecResponse:
        return await self.blocking(self._compile, request)

    def _compile(self, request: service_pb2.CompileSpecRequest) -> service_pb2.CompileSpecResponse:
        style = request.style or "sequential"
        if style not in STYLES:
            raise invalid("style", f"must be one of {', '.join(STYLES)} (empty means sequential), got '{style}'", "literal_error")
        spec = request_fields.spec_of(request.spec, "spec", self._config.max_params)
        self._models.compiled(spec, style)
        return service_pb2.CompileSpecResponse(
            spec_hash=spec.spec_hash(), layers=[responses.layer_summary(node) for node in spec.nodes],
            output_shape=spec.output_shape, num_params=spec.num_params,
            code=generate_code(spec, style) if request.include_code else "", summary=spec.summary(),
        )

    # -- evaluation ------------------------------------------------------------------------

    @handled
    async def Evaluate(self, received: Received[service_pb2.EvaluateRequest], context: grpc.aio.ServicerContext) -> service_pb2.EvaluateResponse:
        regions = self._grpc_regions({"input": received.message.input})
        response = await self.evaluate(received, regions, self.budget(context))
        if self.local_socket is not None and received.message.input.WhichOneof("payload") == "shared_memory":
            context.set_trailing_metadata(((localsocket.METADATA_KEY, self.local_socket),))
        return response

    @handled
    async def StreamEvaluate(self, incoming: Incoming, context: grpc.aio.ServicerContext) -> None:
        # at once, naming the local socket if there is one: a same-host client waits for these headers to choose where it streams
        await context.send_initial_metadata(((localsocket.METADATA_KEY, self.local_socket),) if self.local_socket else ())
        await self.stream_evaluate(StreamEnds(
            incoming.next, functools.partial(self._send, context), lambda path, tensor: self._grpc_regions({path: tensor}),
            lambda: self.budget(context), context.peer()))

    async def stream_evaluate(self, ends: StreamEnds) -> None:
        """StreamEvaluate, for gRPC and the local socket alike; raises what the call fails with.

        The start names the model; then each batch is read, checked and handed to a compute lane up to
        ``STREAM_AHEAD`` batches ahead of the one being answered (``read_ahead``), answered in order.
        """
        with self.streams.held(ends.peer):
            received = await ends.receive()
            first = received.message if received is not None else None
            if first is None or first.WhichOneof("item") != "start":
                got = "nothing" if first is None else "a batch"
                raise invalid("start", f"the first message must be start (the model and options), got {got}", "missing")
            ready = await self._ready(first.start, "start.")
            options = request_fields.options_of(first.start.options, ready.spec, "start.options")
            run = Pass(ready, options)
            lane = self.lanes.small
            ahead: ReadAhead[Received[service_pb2.StreamEvaluateRequest], service_pb2.StreamEvaluateResponse] | None = None
            try:
                await lane.run(run.__enter__)  # a call cancelled meanwhile still exits it: the exit takes its turn after it
                ahead = ReadAhead(ends.receive, functools.partial(self._start_batch, run, ends), STREAM_AHEAD)
                while (answer := await ahead.next()) is not None:
                    await ends.send(answer)
                stats = [layer.to_proto() for layer in await lane.run(run.stats)]
            finally:
                if ahead is not None:
                    await ahead.close()
                await lane.run(run.__exit__, None, None, None)
            await ends.send(service_pb2.StreamEvaluateResponse(summary=service_pb2.StreamSummary(
                batches=run.batches, rows=run.rows, stats=stats, compute_seconds=run.seconds,
            )))

    def _start_batch(self, run: Pass, ends: StreamEnds, received: Received[service_pb2.StreamEvaluateRequest],
                     index: int) -> Started[service_pb2.StreamEvaluateResponse]:
        """Check the stream's ``index``-th batch and submit its compute; on the event loop."""
        message = received.message
        path = f"batch[{index}]"
        if message.WhichOneof("item") != "batch":
            raise invalid(path, "every message after the first must be a batch; start comes once", "unexpected_start")
        batch = WireBatch(message.batch, received.data, ends.regions(path, message.batch), path)
        flops = self._check_cost(run.ready.spec, batch.rows, path)
        budget = ends.budget()
        future = self.lanes.for_cost(flops).submit(self._answer_batch, run, batch, index, budget)
        self._pool.track(future)
        return Started(future, budget)

    def _answer_batch(self, run: Pass, batch: WireBatch, index: int, budget: Budget) -> service_pb2.StreamEvaluateResponse:
        """One stream batch's answer; runs in a compute lane."""
        response = service_pb2.StreamEvaluateResponse()
        response.output.batch_index = index
        run_alone(run, batch, response.output.output, budget, self._config)
        return response

    # -- training --------------------------------------------------------------------------

    @handled
    async def Train(self, request: service_pb2.TrainRequest, context: grpc.aio.ServicerContext) -> None:
        with self.streams.held(context.peer()):
            spec, config, (data, data_field) = await self.blocking(self._train_inputs, request)
            job = self._jobs.start(spec, data, config, request_fields.run_name(request.name, spec))
            try:
                async for burst in job.bursts(EVENT_INTERVAL):
                    for message in responses.train_messages(job.run_id, burst):
                        await self._send(context, message)
            except DataError as error:
                raise invalid(data_field, str(error), "data") from None
            except RunFailed as failure:  # recorded failed in the store: the stream ends normally, saying why
                await self._send(context, responses.failed_event(job.run_id, failure.reason, failure.steps))
            except BaseException as error:  # the call ended before the run: the run ends too
                remaining = context.time_remaining()
                job.cancel(str(error) if isinstance(error, RequestError) else
                           "the call's deadline passed" if remaining is not None and remaining <= DEADLINE_SLACK else
                           "the client cancelled the call")
                raise

    def _train_inputs(self, request: service_pb2.TrainRequest) -> tuple[ModelSpec, Any, tuple[Any, str]]:
        spec = request_fields.spec_of(request.spec, "spec", self._config.max_params)
        config = request_fields.train_config(request.config, self._models.device)
        arrays = {f"arrays.{part}": getattr(request.arrays, part) for part in ("x", "y")} if request.HasField("arrays") else {}
        return spec, config, request_fields.train_data(request, regions=self._grpc_regions(arrays))

    # -- the store -------------------------------------------------------------------------

    @handled
    async def ListModels(self, request: service_pb2.ListModelsRequest, context: grpc.aio.ServicerContext) -> service_pb2.ListModelsResponse:
        page = await self.blocking(self._store.page, request_fields.status_filter(request.status), limit=request_fields.page_size(request.page_size),
                                   after=request.page_token or None)
        return service_pb2.ListModelsResponse(models=[responses.model_summary(s) for s in page.records], next_page_token=page.next or "")

    @handled
    async def GetModel(self, request: service_pb2.GetModelRequest, context: grpc.aio.ServicerContext) -> service_pb2.ModelRecord:
        return responses.model_record(await self.blocking(self._store.get, request_fields.model_id(request.model_id)))

    @handled
    async def DeleteModel(self, request: service_pb2.DeleteModelRequest, context: grpc.aio.ServicerContext) -> service_pb2.DeleteModelResponse:
        model_id = request_fields.model_id(request.model_id)
        await self.blocking(self._store.delete, model_id)
        self._models.forget(model_id)
        return service_pb2.DeleteModelResponse()

    @handled
    async def ExportModel(self, request: service_pb2.ExportModelRequest, context: grpc.aio.ServicerContext) -> service_pb2.ExportModelResponse:
        spec, weights = await self.blocking(self._store.export, request_fields.model_id(request.model_id))
        return service_pb2.ExportModelResponse(spec=spec_to_proto(spec), weights={key: to_proto(array) for key, array in weights.items()})

    # -- what the service offers -----------------------------------------------------------

    @handled
    async def ListActivations(self, request: service_pb2.ListActivationsRequest, context: grpc.aio.ServicerContext) -> service_pb2.ListActivationsResponse:
        return await self.blocking(catalog.activations)

    @handled
    async def ListLayers(self, request: service_pb2.ListLayersRequest, context: grpc.aio.ServicerContext) -> service_pb2.ListLayersResponse:
        return await self.blocking(catalog.layers)

    @handled
    async def ListDatasets(self, request: service_pb2.ListDatasetsRequest, context: grpc.aio.ServicerContext) -> service_pb2.ListDatasetsResponse:
        return await self.blocking(catalog.datasets)

    @handled
    async def GetSchema(self, request: service_pb2.GetSchemaRequest, context: grpc.aio.ServicerContext) -> service_pb2.GetSchemaResponse:
        return await self.blocking(catalog.schemas)
