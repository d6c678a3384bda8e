"""``ModelService``: each RPC reads its request into core objects, calls the core, answers in protobuf.

No model logic lives here: validation is ``parse_spec``, compiling ``CompileCache``, training
``train_events`` (through ``jobs``), storage ``ModelStore``. Every method is wrapped by
``errors.handled``, so whatever goes wrong becomes a proper gRPC status.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import torch

from specbuilder import localsocket
from specbuilder.codegen import generate_code
from specbuilder.datasets import DataError
from specbuilder.errors import SpecError
from specbuilder.proto import spec_to_proto
from specbuilder.regions import SharedRegions
from specbuilder.spec import STYLES, ModelSpec
from specbuilder.stats import LayerStats
from specbuilder.store import ModelStore
from specbuilder.v1 import service_pb2, service_pb2_grpc
from specbuilder.wire import to_proto
from specbuilder_server import convert, requests
from specbuilder_server.compute import on_compute_thread
from specbuilder_server.config import ServerConfig
from specbuilder_server.decoding import Received
from specbuilder_server.errors import handled, invalid
from specbuilder_server.evaluation import Pass
from specbuilder_server.jobs import EVENT_INTERVAL, RunFailed, TrainingJobs
from specbuilder_server.models import Models, Ready
from specbuilder_server.tensors import check_output_size, with_batch, write_tensor


DEADLINE_SLACK = 0.25
"""A call that ends this close to its deadline ended by it: the client's own timer usually cancels it
a moment before the server's deadline (which is later by the transit time) passes."""


class ModelServicer(service_pb2_grpc.ModelServiceServicer):
    """The service over one store, one model cache, one pool of training jobs and the shared-memory regions it reads."""

    def __init__(self, config: ServerConfig, store: ModelStore, models: Models, jobs: TrainingJobs, regions: SharedRegions | None) -> None:
        self._config = config
        self._store = store
        self._models = models
        self._jobs = jobs
        self._regions = regions
        """Where shared-memory batches are read from; None: they are refused (no ``--shared-memory``)."""
        self.local_socket: str | None = None
        """The local socket's path (``local.py``), named to clients in the trailing metadata of shared-memory Evaluate calls."""

    # -- helpers ---------------------------------------------------------------------------

    def _spec(self, source: service_pb2.SpecSource, path: str = "spec") -> ModelSpec:
        return requests.spec_of(source, path, self._config.max_params)

    def _ready(self, request: Any) -> Ready:
        """The model a request names (``spec`` or ``model_id``, a oneof called ``model``)."""
        kind = request.WhichOneof("model")
        if kind == "spec":
            return self._models.for_source(request.spec, "spec")
        if kind == "model_id":
            return self._models.stored(requests.model_id(request.model_id))
        raise invalid("model", "is required: set spec (compiled and cached by its hash) or model_id (a stored model)", "missing")

    def _evaluate(self, run: Pass, tensor: Any, data: memoryview | None, path: str, output: Any) -> None:
        """One batch through the pass (``data``: its elements, cut from the request's bytes); its output
        written into ``output`` unless outputs are skipped. Runs on the compute thread (``compute.py``),
        as all model work does."""

        def compute(batch: torch.Tensor) -> None:
            result = run.run(batch)
            if not run.options.skip_output:
                check_output_size(result, self._config.max_message_bytes, path)
                write_tensor(result, output)

        ready = run.ready
        with_batch(tensor, path, ready.spec, compute, device=ready.device, dtype=ready.dtype,
                   max_elements=self._config.max_batch_elements, regions=self._regions, data=data)

    def _evaluate_with_stats(self, run: Pass, tensor: Any, data: memoryview | None, output: Any) -> list[LayerStats]:
        """Evaluate's one batch, then the statistics: a single turn on the compute thread."""
        self._evaluate(run, tensor, data, "input", output)
        return run.stats()

    # -- specs -----------------------------------------------------------------------------

    @handled
    def ValidateSpec(self, request: service_pb2.ValidateSpecRequest, context: grpc.ServicerContext) -> service_pb2.ValidateSpecResponse:
        try:
            spec = requests.parse_source(request.spec, "spec", self._config.max_params)
        except SpecError as error:  # an invalid spec is an answer, not an error
            return service_pb2.ValidateSpecResponse(valid=False, violations=[
                service_pb2.FieldViolation(path=p.path, message=p.message, type=p.type) for p in error.problems
            ])
        return service_pb2.ValidateSpecResponse(
            valid=True, spec=spec_to_proto(spec), spec_hash=spec.spec_hash(), num_params=spec.num_params, output_shape=spec.output_shape,
        )

    @handled
    def CompileSpec(self, request: service_pb2.CompileSpecRequest, context: grpc.ServicerContext) -> service_pb2.CompileSpecResponse:
        style = request.style or "sequential"
        if style not in STYLES:
            raise invalid("style", f"must be one of {', '.join(STYLES)} (empty means sequential), got '{style}'", "literal_error")
        spec = self._spec(request.spec)
        self._models.compiled(spec, style)
        return service_pb2.CompileSpecResponse(
            spec_hash=spec.spec_hash(), layers=[convert.layer_summary(node) for node in spec.nodes],
            output_shape=spec.output_shape, num_params=spec.num_params,
            code=generate_code(spec, style) if request.include_code else "", summary=spec.summary(),
        )

    # -- evaluation ------------------------------------------------------------------------

    @handled
    def Evaluate(self, received: Received[service_pb2.EvaluateRequest], context: grpc.ServicerContext) -> service_pb2.EvaluateResponse:
        request = received.message
        ready = self._ready(request)
        options = requests.options_of(request.options, ready.spec)
        if not request.HasField("input"):
            raise invalid("input", f"is required: a batch of shape [N, {', '.join(map(str, ready.spec.input_shape))}]", "missing")
        response = service_pb2.EvaluateResponse()
        with Pass(ready, options) as run:
            response.stats.extend(convert.stats_list(on_compute_thread(self._evaluate_with_stats, run, request.input, received.data, response.output)))
        response.compute_seconds = run.seconds
        if self.local_socket is not None and request.input.WhichOneof("payload") == "shared_memory":
            context.set_trailing_metadata(((localsocket.METADATA_KEY, self.local_socket),))
        return response

    @handled
    def StreamEvaluate(
        self, request_iterator: Iterator[Received[service_pb2.StreamEvaluateRequest]], context: grpc.ServicerContext,
    ) -> Iterator[service_pb2.StreamEvaluateResponse]:
        received = next(request_iterator, None)
        first = received.message if received is not None else None
        if first is None or first.WhichOneof("item") != "start":
            got = "nothing" if first is None else "a batch"
            raise invalid("start", f"the first message must be start (the model and options), got {got}", "missing")
        ready = self._ready(first.start)
        options = requests.options_of(first.start.options, ready.spec, "start.options")
        with Pass(ready, options) as run:
            for index, received in enumerate(request_iterator):
                message = received.message
                if message.WhichOneof("item") != "batch":
                    raise invalid(f"batch[{index}]", "every message after the first must be a batch; start comes once", "unexpected_start")
                response = service_pb2.StreamEvaluateResponse()
                response.output.batch_index = index
                on_compute_thread(self._evaluate, run, message.batch, received.data, f"batch[{index}]", response.output.output)
                del received, message  # the batch's bytes go now, not after the next batch has arrived
                yield response
            stats = convert.stats_list(on_compute_thread(run.stats))
        yield service_pb2.StreamEvaluateResponse(summary=service_pb2.StreamSummary(
            batches=run.batches, rows=run.rows, stats=stats, compute_seconds=run.seconds,
        ))

    # -- training --------------------------------------------------------------------------

    @handled
    def Train(self, request: service_pb2.TrainRequest, context: grpc.ServicerContext) -> Iterator[service_pb2.TrainEvent]:
        spec = self._spec(request.spec)
        config = requests.train_config(request.config, {"device": self._config.device})
        data, data_field = requests.train_data(request, regions=self._regions)
        job = self._jobs.start(spec, data, config, requests.run_name(request.name, spec))

        def stop() -> None:  # runs when the call ends, however it ends; a finished job ignores it
            deadline = context.time_remaining() <= DEADLINE_SLACK
            job.cancel("the call's deadline passed" if deadline else "the client cancelled the call")

        if not context.add_callback(stop):  # the call ended already
            stop()
        try:
            for burst in job.bursts(EVENT_INTERVAL):
                yield from convert.train_messages(job.run_id, burst)
        except DataError as error:
            raise invalid(data_field, str(error), "data") from None
        except RunFailed as failure:  # recorded failed in the store: the stream ends normally, saying why
            yield convert.failed_event(job.run_id, failure.reason, failure.steps)

    # -- the store -------------------------------------------------------------------------

    @handled
    def ListModels(self, request: service_pb2.ListModelsRequest, context: grpc.ServicerContext) -> service_pb2.ListModelsResponse:
        records = self._store.list(requests.status_filter(request.status))
        return service_pb2.ListModelsResponse(models=[convert.model_record(r, full=False) for r in reversed(records)])

    @handled
    def GetModel(self, request: service_pb2.GetModelRequest, context: grpc.ServicerContext) -> service_pb2.ModelRecord:
        return convert.model_record(self._store.get(requests.model_id(request.model_id)))

    @handled
    def DeleteModel(self, request: service_pb2.DeleteModelRequest, context: grpc.ServicerContext) -> service_pb2.DeleteModelResponse:
        model_id = requests.model_id(request.model_id)
        self._store.delete(model_id)
        self._models.forget(model_id)
        return service_pb2.DeleteModelResponse()

    @handled
    def ExportModel(self, request: service_pb2.ExportModelRequest, context: grpc.ServicerContext) -> service_pb2.ExportModelResponse:
        spec, weights = self._store.export(requests.model_id(request.model_id))
        return service_pb2.ExportModelResponse(spec=spec_to_proto(spec), weights={key: to_proto(array) for key, array in weights.items()})

    @handled
    def ListActivations(self, request: service_pb2.ListActivationsRequest, context: grpc.ServicerContext) -> service_pb2.ListActivationsResponse:
        return convert.activations()
