"""``ModelService``: each RPC reads its request into core objects, calls the core, answers in protobuf.

No model logic lives here: validation is ``parse_spec``, compiling and caching ``model_cache``,
training ``train_events`` (through ``jobs``), storage ``ModelStore``. Every method is a coroutine
on the server's event loop wrapped by ``errors.handled``, so whatever goes wrong becomes a proper
gRPC status. A call holds no thread while it waits (for a message, for its turn, for a slow
reader): blocking work (parsing large specs, compiling, the store) runs on the worker threads
(``blocking``), forwards and statistics in a compute lane (``compute_lanes``; Evaluate calls through
``batching``, which merges concurrent ones), each within a ``Budget`` (deadline, cancel, compute
seconds), after the call's estimated cost was checked against the server's limit. Streams are
capped in number, in all and per connection, and one that neither sends nor reads for
``stream_idle_seconds`` is ended.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

import grpc
import grpc.aio

from specbuilder import localsocket
from specbuilder.codegen import generate_code
from specbuilder.datasets import DataError
from specbuilder.errors import SpecError
from specbuilder.proto import spec_to_proto
from specbuilder.regions import RegionReader, SharedRegions
from specbuilder.spec import STYLES, ModelSpec
from specbuilder.store import ModelStore
from specbuilder.v1 import service_pb2, tensor_pb2
from specbuilder.wire import to_proto
from specbuilder_server import convert, request_fields
from specbuilder_server.batching import Batcher, Call
from specbuilder_server.compute_budget import Budget
from specbuilder_server.compute_lanes import Lanes
from specbuilder_server.config import ServerConfig
from specbuilder_server.errors import ClientGone, RequestError, exhausted, handled, invalid
from specbuilder_server.forward_pass import Pass, WireBatch, run_alone
from specbuilder_server.jobs import EVENT_INTERVAL, RunFailed, TrainingJobs
from specbuilder_server.metrics import Metrics
from specbuilder_server.model_cache import Models, Ready
from specbuilder_server.raw_handlers import Incoming, Received
from specbuilder_server.stream_slots import StreamSlots
from specbuilder_server.worker_pool import TrimmingPool

DEADLINE_SLACK = 0.25
"""A call that ends this close to its deadline ended by it: the client's own timer usually cancels it
a moment before the server's deadline (which is later by the transit time) passes."""
P = ParamSpec("P")
T = TypeVar("T")


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
        with self._pool.working():
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

    async def _ready(self, request: Any, check: Callable[[ModelSpec], object] | None = None) -> Ready:
        """The model a request names (``spec`` or ``model_id``, a oneof called ``model``); ``check`` sees a
        spec sent with the request before it is compiled."""
        kind = request.WhichOneof("model")
        if kind == "spec":
            ready = self._models.cache.by_source(self._models.source_key(request.spec))
            return ready or await self.blocking(self._models.for_source, request.spec, "spec", check)
        if kind == "model_id":
            return await self.blocking(self._models.stored, request_fields.model_id(request.model_id))
        raise invalid("model", "is required: set spec (compiled and cached by its hash) or model_id (a stored model)", "missing")

    async def evaluate(self, received: Received[service_pb2.EvaluateRequest], regions: RegionReader | None,
                       budget: Budget) -> service_pb2.EvaluateResponse:
        """Evaluate, for gRPC and the local socket alike; raises what the call fails with."""
        request = received.message
        batch = WireBatch(request.input, received.data, regions, "input")
        ready = await self._ready(request, lambda spec: self._check_cost(spec, batch.rows, "input"))  # refused before it is compiled
        options = request_fields.options_of(request.options, ready.spec)
        if not request.HasField("input"):
            raise invalid("input", f"is required: a batch of shape [N, {', '.join(map(str, ready.spec.input_shape))}]", "missing")
        flops = self._check_cost(ready.spec, batch.rows, "input")
        response = service_pb2.EvaluateResponse()
        call = Call(ready, options, batch, response.output, budget, flops)
        stats, seconds = await self._awaited(self._batcher.submit(call), budget)
        response.stats.extend(convert.stats_list(stats))
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
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, (
                f"the client read none of the server's messages for {self._config.stream_idle_seconds:g} s, this server's limit "
                "(stream_idle_seconds)"))
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
            spec_hash=spec.spec_hash(), layers=[convert.layer_summary(node) for node in spec.nodes],
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
        with self.streams.held(context.peer()):
            received = await incoming.next()
            first = received.message if received is not None else None
            if first is None or first.WhichOneof("item") != "start":
                got = "nothing" if first is None else "a batch"
                raise invalid("start", f"the first message must be start (the model and options), got {got}", "missing")
            ready = await self._ready(first.start)
            options = request_fields.options_of(first.start.options, ready.spec, "start.options")
            run = Pass(ready, options)
            lane = self.lanes.small
            await lane.run(run.__enter__)
            try:
                index = 0
                while (received := await incoming.next()) is not None:
                    await self._stream_batch(context, run, received, index)
                    del received  # the batch's bytes go now, not after the next batch has arrived
                    index += 1
                stats = convert.stats_list(await lane.run(run.stats))
            finally:
                await lane.run(run.__exit__, None, None, None)
            await self._send(context, service_pb2.StreamEvaluateResponse(summary=service_pb2.StreamSummary(
                batches=run.batches, rows=run.rows, stats=stats, compute_seconds=run.seconds,
            )))

    async def _stream_batch(self, context: grpc.aio.ServicerContext, run: Pass, received: Received[service_pb2.StreamEvaluateRequest],
                            index: int) -> None:
        message = received.message
        path = f"batch[{index}]"
        if message.WhichOneof("item") != "batch":
            raise invalid(path, "every message after the first must be a batch; start comes once", "unexpected_start")
        batch = WireBatch(message.batch, received.data, self._grpc_regions({path: message.batch}), path)
        flops = self._check_cost(run.ready.spec, batch.rows, path)
        response = service_pb2.StreamEvaluateResponse()
        response.output.batch_index = index
        budget = self.budget(context)
        await self._compute(flops, budget, run_alone, run, batch, response.output.output, budget, self._config)
        await self._send(context, response)

    # -- training --------------------------------------------------------------------------

    @handled
    async def Train(self, request: service_pb2.TrainRequest, context: grpc.aio.ServicerContext) -> None:
        with self.streams.held(context.peer()):
            spec, config, (data, data_field) = await self.blocking(self._train_inputs, request)
            job = self._jobs.start(spec, data, config, request_fields.run_name(request.name, spec))
            try:
                async for burst in job.bursts(EVENT_INTERVAL):
                    for message in convert.train_messages(job.run_id, burst):
                        await self._send(context, message)
            except DataError as error:
                raise invalid(data_field, str(error), "data") from None
            except RunFailed as failure:  # recorded failed in the store: the stream ends normally, saying why
                await self._send(context, convert.failed_event(job.run_id, failure.reason, failure.steps))
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
        return service_pb2.ListModelsResponse(models=[convert.model_summary(s) for s in page.records], next_page_token=page.next or "")

    @handled
    async def GetModel(self, request: service_pb2.GetModelRequest, context: grpc.aio.ServicerContext) -> service_pb2.ModelRecord:
        return convert.model_record(await self.blocking(self._store.get, request_fields.model_id(request.model_id)))

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

    @handled
    async def ListActivations(self, request: service_pb2.ListActivationsRequest, context: grpc.aio.ServicerContext) -> service_pb2.ListActivationsResponse:
        return await self.blocking(convert.activations)
