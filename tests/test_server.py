"""The gRPC service end to end: every RPC against a real server on 127.0.0.1, through the generated stub."""

from __future__ import annotations

import os
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server_helpers import (
    QUICK, SPIRALS, batch, config_values, connect, open_channel, rpc_error, serving, spec_source, train_request,
)
from specbuilder.activations import ACTIVATIONS
from specbuilder.compiler import compile_spec
from specbuilder.proto import spec_from_proto
from specbuilder.spec import parse_spec
from specbuilder_server import RunningServer
from specbuilder_server.lifecycle import SERVICE_NAME
from specbuilder_wire.arrays import to_numpy
from specbuilder_wire.v1 import service_pb2 as pb
from specbuilder_wire.v1 import tensor_pb2
from specbuilder_wire.v1.service_pb2_grpc import ModelServiceStub as Stub


X = np.random.default_rng(0).normal(size=(7, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def trained(stub: Stub) -> list[pb.TrainEvent]:
    """The events of one quick training run on spirals, with statistics every 5 steps."""
    return list(stub.Train(train_request(epochs=3, batch_size=64, stats_every=5)))


def test_validate_answers_valid_specs_with_their_facts_and_invalid_ones_with_violations(stub: Stub) -> None:
    valid = stub.ValidateSpec(pb.ValidateSpecRequest(spec=spec_source(SPIRALS)))
    spec = parse_spec(SPIRALS)
    assert valid.valid and not valid.violations
    assert (valid.spec_hash, valid.num_params, list(valid.output_shape)) == (spec.spec_hash(), spec.num_params, [2])
    assert spec_from_proto(valid.spec) == spec

    bad = {"input_shape": [2], "layers": [{"type": "linear", "out_features": 0}, {"type": "leaky_relu", "negative_slope": -1}]}
    invalid = stub.ValidateSpec(pb.ValidateSpecRequest(spec=spec_source(bad)))
    assert not invalid.valid and not invalid.spec_hash
    assert [(v.path, v.message, v.type) for v in invalid.violations] == [
        ("layers[0].out_features", "must be >= 1, got 0", "greater_than_equal"),
        ("layers[1].negative_slope", "must be >= 0, got -1", "greater_than_equal"),
    ]


def test_compile_returns_the_layer_table_and_code_in_either_style(stub: Stub) -> None:
    for style in ("", "sequential", "functional"):
        answer = stub.CompileSpec(pb.CompileSpecRequest(spec=spec_source(SPIRALS), style=style, include_code=True))
        assert [(l.index, l.name, l.type, l.path, list(l.output_shape), l.num_params) for l in answer.layers] == [
            (0, "fc1", "linear", "layers[0]", [16], 48), (1, "tanh_1", "tanh", "layers[0].activation", [16], 0),
            (2, "out", "linear", "layers[1]", [2], 34),
        ]
        assert answer.num_params == 82 and list(answer.output_shape) == [2] and "fc1" in answer.summary
        namespace: dict[str, object] = {}
        exec(compile(answer.code, "<generated>", "exec"), namespace)  # the server's generated source runs as it is
        assert "SpiralsMlp" in namespace
    assert not stub.CompileSpec(pb.CompileSpecRequest(spec=spec_source(SPIRALS))).code


def test_evaluate_a_spec_gives_outputs_statistics_and_the_time_spent(stub: Stub) -> None:
    request = pb.EvaluateRequest(spec=spec_source(SPIRALS), input=batch(X), options=pb.EvaluateOptions(statistics=True, bins=16))
    answer = stub.Evaluate(request)
    assert list(answer.output.shape) == [7, 2] and to_numpy(answer.output).dtype == np.float32
    assert [s.name for s in answer.stats] == ["tanh_1"]  # activations by default
    tanh = answer.stats[0]
    assert tanh.count == 7 * 16 and -1 <= tanh.min <= tanh.max <= 1 and len(tanh.histogram.counts) == 16
    assert answer.compute_seconds > 0
    again = stub.Evaluate(request)  # the compiled module is cached by hash: same weights, same outputs
    np.testing.assert_array_equal(to_numpy(again.output), to_numpy(answer.output))

    everything = stub.Evaluate(pb.EvaluateRequest(spec=spec_source(SPIRALS), input=batch(X), options=pb.EvaluateOptions(statistics=True, all_layers=True)))
    assert [s.name for s in everything.stats] == ["fc1", "tanh_1", "out"]
    chosen = stub.Evaluate(pb.EvaluateRequest(spec=spec_source(SPIRALS), input=batch(X), options=pb.EvaluateOptions(statistics=True, layers=["out"], skip_output=True)))
    assert [s.name for s in chosen.stats] == ["out"] and not chosen.HasField("output")
    plain = stub.Evaluate(pb.EvaluateRequest(spec=spec_source(SPIRALS), input=batch(X.astype(np.float64))))
    assert not plain.stats and to_numpy(plain.output).dtype == np.float32  # float64 input runs in the model's dtype
    np.testing.assert_allclose(to_numpy(plain.output), to_numpy(answer.output), rtol=1e-6)


def progress(messages: list[pb.TrainEvent], kind: str) -> list[Any]:
    """The epochs (``kind`` "epoch") or statistics windows ("stats") of a Train stream's progress messages, in order."""
    return [getattr(item, kind) for m in messages if m.HasField("progress") for item in m.progress.items if item.HasField(kind)]


def test_train_streams_started_progress_finished_and_stores_the_model(stub: Stub, trained: list[pb.TrainEvent]) -> None:
    kinds = [event.WhichOneof("event") for event in trained]
    assert kinds[0] == "started" and kinds[-1] == "finished" and set(kinds[1:-1]) == {"progress"}
    assert all(m.progress.items for m in trained[1:-1])  # no empty progress message
    assert [e.epoch for e in progress(trained, "epoch")] == [1, 2, 3] and progress(trained, "stats")
    run_id = trained[0].run_id
    assert len(run_id) == 32 and {event.run_id for event in trained} == {run_id}
    started, finished = trained[0].started, trained[-1].finished
    assert started.epochs == 3 and started.train_samples + started.val_samples > 0 and started.steps_per_epoch > 0
    assert finished.status == pb.RUN_STATUS_COMPLETED and finished.steps == 3 * started.steps_per_epoch
    assert [s.name for s in finished.stats] == ["tanh_1"]
    window = progress(trained, "stats")[0]
    assert window.step == 5 and window.stats[0].HasField("grad_norm")

    record = stub.GetModel(pb.GetModelRequest(model_id=run_id))
    assert record.status == pb.RUN_STATUS_COMPLETED and record.has_weights and record.dataset == "spirals"
    assert [e.epoch for e in record.history] == [1, 2, 3]
    assert [e.loss for e in record.history] == [e.loss for e in progress(trained, "epoch")]
    assert record.config["epochs"].int_value == 3 and record.config["optimizer.type"].string_value == "adam"
    assert record.created.seconds > 0 and record.updated.ToDatetime() >= record.created.ToDatetime()
    assert [s.name for s in record.stats] == ["tanh_1"] and spec_from_proto(record.spec) == parse_spec(SPIRALS)


def test_a_stored_model_evaluates_exports_lists_and_deletes(stub: Stub, trained: list[pb.TrainEvent]) -> None:
    run_id = trained[0].run_id
    exported = stub.ExportModel(pb.ExportModelRequest(model_id=run_id))
    model = compile_spec(spec_from_proto(exported.spec), device="cpu", init=False)
    model.load_state_dict({key: torch.from_numpy(to_numpy(t).copy()) for key, t in exported.weights.items()})
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(X)).numpy()
    answer = stub.Evaluate(pb.EvaluateRequest(model_id=run_id, input=batch(X)))
    np.testing.assert_allclose(to_numpy(answer.output), expected, rtol=1e-5, atol=1e-6)

    listed = stub.ListModels(pb.ListModelsRequest())
    assert run_id in [m.id for m in listed.models]
    assert all(not m.history and not m.stats for m in listed.models)  # GetModel has them
    assert run_id in [m.id for m in stub.ListModels(pb.ListModelsRequest(status=pb.RUN_STATUS_COMPLETED)).models]
    assert run_id not in [m.id for m in stub.ListModels(pb.ListModelsRequest(status=pb.RUN_STATUS_RUNNING)).models]

    config = stub.GetModel(pb.GetModelRequest(model_id=run_id)).config  # a record's config goes back as it is
    again = list(stub.Train(pb.TrainRequest(spec=spec_source(SPIRALS), dataset="spirals", name="to-delete", config=config)))
    assert [e.loss for e in progress(again, "epoch")] == [e.loss for e in progress(trained, "epoch")]
    copy = again[0].run_id
    newest = stub.ListModels(pb.ListModelsRequest()).models
    assert newest[0].id == copy and newest[0].name == "to-delete"  # newest first
    stub.Evaluate(pb.EvaluateRequest(model_id=copy, input=batch(X)))  # cached now
    stub.DeleteModel(pb.DeleteModelRequest(model_id=copy))
    assert copy not in [m.id for m in stub.ListModels(pb.ListModelsRequest()).models]
    with pytest.raises(grpc.RpcError) as gone:
        stub.Evaluate(pb.EvaluateRequest(model_id=copy, input=batch(X)))  # not served from the cache
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_stream_evaluate_answers_each_batch_in_order_then_a_summary(stub: Stub, trained: list[pb.TrainEvent]) -> None:
    run_id = trained[0].run_id
    batches = [X[:3], X[3:], X]

    def requests():
        yield pb.StreamEvaluateRequest(start=pb.StreamEvaluateStart(model_id=run_id, options=pb.EvaluateOptions(statistics=True)))
        for part in batches:
            yield pb.StreamEvaluateRequest(batch=batch(part))

    answers = list(stub.StreamEvaluate(requests()))
    outputs, summary = answers[:-1], answers[-1].summary
    assert [a.output.batch_index for a in outputs] == [0, 1, 2]
    single = to_numpy(stub.Evaluate(pb.EvaluateRequest(model_id=run_id, input=batch(X))).output)
    np.testing.assert_allclose(np.concatenate([to_numpy(a.output.output) for a in outputs[:2]]), single, rtol=1e-6)
    assert (summary.batches, summary.rows) == (3, 14) and summary.compute_seconds > 0
    assert [s.name for s in summary.stats] == ["tanh_1"] and summary.stats[0].count == 14 * 16


def test_list_activations_is_the_registry(stub: Stub) -> None:
    listed = stub.ListActivations(pb.ListActivationsRequest()).activations
    assert [a.name for a in listed] == list(ACTIVATIONS)
    leaky = next(a for a in listed if a.name == "leaky_relu")
    assert [(p.name, p.type, p.default.float_value, p.constraint) for p in leaky.parameters] == [("negative_slope", "number", 0.01, ">= 0")]
    sigmoid = next(a for a in listed if a.name == "sigmoid")
    assert (sigmoid.range_min, sigmoid.range_max) == (0.0, 1.0) and sigmoid.flat_region and sigmoid.formula
    step = next(a for a in listed if a.name == "step")
    assert "heaviside" in step.aliases and next(p for p in step.parameters if p.name == "surrogate").constraint == "one of 'none', 'ste'"
    threshold = next(a for a in listed if a.name == "threshold")
    assert all(not p.HasField("default") for p in threshold.parameters)  # required parameters have none


def test_health_serves_overall_and_per_service_and_reflection_lists_the_services(server: RunningServer) -> None:
    with open_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        assert {s.name for s in answer.list_services_response.service} >= {SERVICE_NAME, "grpc.health.v1.Health"}


def test_shared_memory_batches_are_read_in_place_when_the_server_allows_them(tmp_path: Path) -> None:
    region = shared_memory.SharedMemory(name=f"specbuilder_test_{os.getpid()}", create=True, size=64 + X.nbytes)
    try:
        np.ndarray(X.shape, X.dtype, buffer=region.buf, offset=64)[:] = X
        tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=X.shape,
                                   shared_memory=tensor_pb2.SharedMemoryRef(name=region.name, offset=64))
        with serving(tmp_path / "store", shared_memory=True, shared_memory_over_grpc=True) as running, connect(running.address) as shared:
            by_reference = shared.Evaluate(pb.EvaluateRequest(spec=spec_source(SPIRALS), input=tensor))
            inline = shared.Evaluate(pb.EvaluateRequest(spec=spec_source(SPIRALS), input=batch(X)))
            np.testing.assert_array_equal(to_numpy(by_reference.output), to_numpy(inline.output))
            np.ndarray(X.shape, X.dtype, buffer=region.buf, offset=64)[:] = X[::-1]  # the region is kept mapped: new contents are read
            reversed_output = to_numpy(shared.Evaluate(pb.EvaluateRequest(spec=spec_source(SPIRALS), input=tensor)).output)
            np.testing.assert_array_equal(reversed_output, to_numpy(inline.output)[::-1])
            too_far = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[100, 2], shared_memory=tensor.shared_memory)
            failure = rpc_error(lambda: shared.Evaluate(pb.EvaluateRequest(spec=spec_source(SPIRALS), input=too_far)))
            assert failure.fields == ["input.shared_memory"] and "runs past the region" in failure.message
            arrays = pb.TrainArrays(x=tensor, y=batch(np.array([0, 1, 0, 1, 0, 1, 1])))
            events = list(shared.Train(pb.TrainRequest(spec=spec_source(SPIRALS), arrays=arrays, config=config_values(QUICK))))
            assert events[-1].finished.status == pb.RUN_STATUS_COMPLETED and events[0].started.train_samples == 6
    finally:
        region.close()
        region.unlink()


def test_list_models_pages_through_summaries_with_a_token(tmp_path: Path) -> None:
    with serving(tmp_path / "store") as running, connect(running.address) as paged:
        ids = [list(paged.Train(train_request(name=f"run-{index}")))[-1].run_id for index in range(5)]
        seen, token, pages = [], "", 0
        while True:
            page = paged.ListModels(pb.ListModelsRequest(page_size=2, page_token=token))
            assert len(page.models) <= 2 and all(not m.HasField("spec") and not m.history and not m.config for m in page.models)
            seen += [m.id for m in page.models]
            pages += 1
            if not page.next_page_token:
                break
            token = page.next_page_token
        assert seen == ids[::-1] and pages == 3  # newest first, each once
        assert rpc_error(lambda: paged.ListModels(pb.ListModelsRequest(page_size=-1))).fields == ["page_size"]
        assert rpc_error(lambda: paged.ListModels(pb.ListModelsRequest(page_token="not-a-token"))).fields == ["page_token"]
        assert paged.GetModel(pb.GetModelRequest(model_id=ids[0])).HasField("spec")
