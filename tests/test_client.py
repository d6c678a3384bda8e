"""The Python client end to end against a real server on 127.0.0.1: every verb, results, errors.

Outputs are checked against torch in this process: a stored model's exported weights, loaded
into ``compile_spec``'s module, must give what the server computed.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from server_helpers import QUICK, SPIRALS, wait_for
from specbuilder import compile_spec
from specbuilder.spec import ModelSpec, parse_spec
from specbuilder_client import (
    Cancelled,
    Client,
    DeadlineExceeded,
    EpochEvent,
    InvalidArgument,
    NotFound,
    StatsEvent,
    TrainFinished,
    TrainResult,
    TrainStarted,
    Unavailable,
)
from specbuilder_server import RunningServer

X = np.random.default_rng(0).normal(size=(7, 2)).astype(np.float32)
BAD_SLOPE = {
    "input_shape": [2],
    "layers": [{"type": "linear", "out_features": 4}, {"type": "linear", "out_features": 4}, {"type": "leaky_relu", "negative_slope": -1}],
}
MISSING_ID = "0" * 32


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.address, timeout=60) as connected:
        yield connected


@pytest.fixture(scope="module")
def trained(client: Client) -> TrainResult:
    """One quick run on spirals, statistics every 5 steps, an optimizer with parameters."""
    return client.train(SPIRALS, "spirals", name="client-quick", stats_every=5, optimizer={"type": "sgd", "momentum": 0.9}, **QUICK).result()


def test_validate_answers_with_the_facts_or_every_problem_at_its_path(client: Client, tmp_path: Path) -> None:
    spec = parse_spec(SPIRALS)
    (tmp_path / "spec.json").write_text(json.dumps(SPIRALS))
    for given in (SPIRALS, json.dumps(SPIRALS), spec, tmp_path / "spec.json"):
        valid = client.validate(given)
        assert valid and valid.problems == []
        assert (valid.spec_hash, valid.num_params, valid.output_shape) == (spec.spec_hash(), spec.num_params, (2,))
        assert valid.spec is not None and ModelSpec.model_validate(valid.spec) == spec
        assert valid.spec["layers"][0]["bias"] is True  # every parameter spelled out
    invalid = client.validate(BAD_SLOPE)
    assert not invalid and invalid.spec is None
    assert [(p.path, p.type) for p in invalid.problems] == [("layers[2].negative_slope", "greater_than_equal")]


def test_compile_gives_the_layer_table_and_code_when_asked(client: Client) -> None:
    compiled = client.compile(SPIRALS)
    assert [(layer.name, layer.path, layer.output_shape) for layer in compiled.layers] == [
        ("fc1", "layers[0]", (16,)), ("tanh_1", "layers[0].activation", (16,)), ("out", "layers[1]", (2,)),
    ]
    assert compiled.num_params == parse_spec(SPIRALS).num_params and compiled.code is None
    assert str(compiled) == compiled.summary and "fc1" in compiled.summary
    functional = client.compile(SPIRALS, style="functional", code=True)
    assert functional.code is not None and "def forward" in functional.code


def test_evaluate_a_spec_with_statistics_of_the_chosen_layers(client: Client) -> None:
    result = client.evaluate(SPIRALS, X, statistics=True)
    assert result.outputs.shape == (7, 2) and result.outputs.dtype == np.float32
    assert [(s.kind, s.count) for s in result.stats] == [("tanh", 7 * 16)]
    tanh = result.stats[0]
    assert -1 <= tanh.min <= tanh.mean <= tanh.max <= 1 and sum(tanh.histogram.counts) == 7 * 16
    chosen = client.evaluate(SPIRALS, X, statistics=True, layers=["out"], bins=8, skip_output=True)
    assert chosen.outputs is None
    assert [s.name for s in chosen.stats] == ["out"] and len(chosen.stats[0].histogram.counts) == 8
    assert result.compute_seconds > 0


def test_a_training_run_streams_events_and_ends_in_a_stored_model(client: Client, trained: TrainResult) -> None:
    assert trained.status == "completed" and trained.steps > 0
    assert [m.epoch for m in trained.history] == [1, 2] and trained.stats
    record = client.get_model(trained.model_id)
    assert (record.id, record.name, record.status, record.has_weights, record.dataset) == (trained.model_id, "client-quick", "completed", True, "spirals")
    assert ModelSpec.model_validate(record.spec) == parse_spec(SPIRALS) and record.history == trained.history
    assert record.config["epochs"] == 2 and record.config["optimizer"]["type"] == "sgd" and record.config["optimizer"]["momentum"] == 0.9
    assert isinstance(record.created, datetime) and record.created.tzinfo == timezone.utc and record.updated >= record.created
    assert trained.model_id in [m.id for m in client.list_models(status="completed")]
    assert trained.model_id not in [m.id for m in client.list_models(status="cancelled")]


def test_events_come_in_order_and_the_record_repeats_its_config(client: Client, trained: TrainResult) -> None:
    config = client.get_model(trained.model_id).config
    run = client.train(SPIRALS, "spirals", **{**config, "stats_every": 4})  # a record's config goes back as it is
    events = list(run)
    assert isinstance(events[0], TrainStarted) and isinstance(events[-1], TrainFinished)
    assert [e.epoch for e in events if isinstance(e, EpochEvent)] == [1, 2]
    assert any(isinstance(e, StatsEvent) for e in events)
    assert {e.run_id for e in events} == {run.run_id}
    assert run.result().status == "completed"


def test_training_on_arrays(client: Client) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    result = client.train(SPIRALS, (x, y), epochs=1, batch_size=16, validation_split=0.25).result()
    assert result.status == "completed" and [m.epoch for m in result.history] == [1]
    assert client.get_model(result.model_id).has_weights


def test_exported_weights_give_the_server_outputs_in_local_torch(client: Client, trained: TrainResult) -> None:
    spec, weights = client.export_model(trained.model_id)
    assert ModelSpec.model_validate(spec) == parse_spec(SPIRALS)
    model = compile_spec(ModelSpec.model_validate(spec), device="cpu", init=False)
    model.load_state_dict({name: torch.from_numpy(array) for name, array in weights.items()})
    with torch.inference_mode():
        local = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(client.evaluate(trained.model_id, X).outputs, local, rtol=1e-5, atol=1e-6)


def test_streaming_many_batches_returns_every_output_in_order(client: Client, trained: TrainResult) -> None:
    rng = np.random.default_rng(2)
    batches = [rng.normal(size=(1 + i % 5, 2)).astype(np.float32) for i in range(60)]
    stream = client.evaluate_stream(trained.model_id, iter(batches), statistics=True)
    outputs = list(stream.outputs())
    assert [o.shape[0] for o in outputs] == [b.shape[0] for b in batches]
    np.testing.assert_allclose(np.concatenate(outputs), client.evaluate(trained.model_id, np.concatenate(batches)).outputs, rtol=1e-5, atol=1e-6)
    rows = sum(b.shape[0] for b in batches)
    assert (stream.summary.batches, stream.summary.rows) == (60, rows)
    assert [s.count for s in stream.summary.stats] == [rows * 16]


def test_an_endless_stream_is_read_lazily_in_order_until_cancelled(client: Client, trained: TrainResult) -> None:
    def endless() -> Iterator[np.ndarray]:
        for i in itertools.count():  # a stream that buffered its input would never return
            yield np.full((2, 2), i / 10, np.float32)

    expected = client.evaluate(trained.model_id, np.repeat(np.arange(50, dtype=np.float32) / 10, 4).reshape(100, 2)).outputs
    stream = client.evaluate_stream(trained.model_id, endless())
    received = []
    for output in stream:
        received.append(output)
        if len(received) == 50:
            stream.cancel()
    assert len(received) == 50
    np.testing.assert_allclose(np.concatenate(received), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(Cancelled):
        stream.summary


def test_a_stream_read_only_for_its_summary(client: Client) -> None:
    stream = client.evaluate_stream(SPIRALS, (X for _ in range(3)), statistics=True, skip_output=True)
    assert stream.summary.rows == 21 and stream.summary.stats[0].count == 21 * 16


def test_a_failing_batch_iterator_raises_its_own_error_after_the_outputs_before_it(client: Client) -> None:
    def batches() -> Iterator[np.ndarray]:
        yield X
        yield X
        raise KeyError("no more data")

    stream = client.evaluate_stream(SPIRALS, batches())
    seen = []
    with pytest.raises(KeyError, match="no more data"):
        for output in stream:
            seen.append(output)
    assert len(seen) == 2


def test_cancelling_a_run_stops_it_and_the_record_says_so(client: Client) -> None:
    run = client.train(SPIRALS, "spirals", epochs=1_000_000, batch_size=8)
    for event in run:
        if isinstance(event, EpochEvent):
            run.cancel()
    result = run.result()
    assert (result.status, result.steps) == ("cancelled", None) and len(result.history) >= 1
    record = wait_for(lambda: (r := client.get_model(result.model_id)).status != "running" and r, "the cancelled run's record")
    assert record.status == "cancelled"


def test_leaving_a_run_block_early_cancels_the_run(client: Client) -> None:
    with client.train(SPIRALS, "spirals", epochs=1_000_000, batch_size=8) as run:
        started = next(iter(run))
    assert isinstance(started, TrainStarted)
    record = wait_for(lambda: (r := client.get_model(started.run_id)).status != "running" and r, "the abandoned run's record")
    assert record.status == "cancelled"


def test_a_run_past_its_deadline_raises_deadline_exceeded(client: Client) -> None:
    run = client.train(SPIRALS, "spirals", epochs=1_000_000, batch_size=8, timeout=1.0)
    with pytest.raises(DeadlineExceeded) as caught:
        run.result()
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_progress_bar_shows_epochs(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    client.train(SPIRALS, "spirals", progress=True, **QUICK).result()
    err = capsys.readouterr().err
    assert "2/2" in err and "epoch" in err and "loss=" in err


def test_typed_errors_keep_code_message_and_paths_without_grpc_traceback(client: Client) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.evaluate(BAD_SLOPE, X)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.path for v in error.violations] == ["layers[2].negative_slope"]
    assert "layers[2].negative_slope" in error.message and str(error).startswith("INVALID_ARGUMENT: ")
    assert error.__cause__ is None and error.__suppress_context__
    with pytest.raises(InvalidArgument) as caught:
        client.evaluate(SPIRALS, np.zeros((3, 5), np.float32))
    assert [v.path for v in caught.value.violations] == ["input.shape"]
    with pytest.raises(InvalidArgument) as caught:
        client.train(SPIRALS, "spirals", lr=-1.0).result()
    assert [v.path for v in caught.value.violations] == ["config.lr"]


def test_unknown_models_are_not_found_and_deleted_ones_are_gone(client: Client) -> None:
    for call in (client.get_model, client.delete_model, client.export_model, lambda i: client.evaluate(i, X)):
        with pytest.raises(NotFound):
            call(MISSING_ID)
    result = client.train(SPIRALS, "spirals", epochs=1).result()
    client.delete_model(result.model_id)
    with pytest.raises(NotFound):
        client.get_model(result.model_id)
    with pytest.raises(ValueError, match="unknown run status 'done'; use one of running, completed"):
        client.list_models(status="done")


def test_activations_lists_the_registry_with_typed_defaults(client: Client) -> None:
    activations = {a.name: a for a in client.activations()}
    assert {"relu", "leaky_relu", "sigmoid", "step"} <= set(activations)
    slope = {p.name: p for p in activations["leaky_relu"].parameters}["negative_slope"]
    assert slope.default == 0.01 and isinstance(slope.default, float)
    assert (activations["sigmoid"].range_min, activations["sigmoid"].range_max) == (0.0, 1.0)
    assert (slope.minimum, slope.exclusive_minimum, slope.required, slope.inferred) == (0.0, False, False, False)


def test_a_seed_the_wire_cannot_carry_is_refused_before_sending(client: Client) -> None:
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match=f"seed must be 0 to 2\\*\\*64 - 1, got {seed}"):
            client.evaluate(SPIRALS, np.zeros((1, 2), np.float32), seed=seed)


def test_layers_datasets_and_schema_describe_the_service_in_typed_results(client: Client) -> None:
    layers = {layer.name: layer for layer in client.layers()}
    assert "linear" in layers and "relu" not in layers and layers["max_pool2d"].aliases == ["MaxPool2d"]
    linear = {p.name: p for p in layers["linear"].parameters}
    assert (linear["out_features"].type, linear["out_features"].required, linear["out_features"].default) == ("integer", True, None)
    assert linear["in_features"].inferred and linear["bias"].default is True and layers["linear"].module == "torch.nn.Linear"
    padding = {p.name: p for p in layers["conv2d"].parameters}["padding"]
    assert (padding.choices, padding.items, padding.minimum, padding.maximum) == (["same", "valid"], "integer", 0.0, 2**31 - 1)
    datasets = {dataset.name: dataset for dataset in client.datasets()}
    assert (datasets["digits"].input_shape, datasets["digits"].target_kind, datasets["digits"].classes) == ((64,), "classes", 10)
    assert (datasets["sine"].target_kind, datasets["sine"].classes) == ("values", 0)
    schemas = client.schema()
    assert schemas.spec["$schema"] == schemas.train_config["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"input_shape", "layers"} <= set(schemas.spec["properties"]) and "optimizer" in schemas.train_config["properties"]


def test_an_unreachable_server_is_unavailable() -> None:
    with Client("127.0.0.1:1", timeout=10) as nowhere, pytest.raises(Unavailable) as caught:
        nowhere.list_models()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_statistics_through_the_client_carry_everything_the_core_reports(client: Client) -> None:
    spec = {"name": "two-kinds", "input_shape": [3, 4, 4], "layers": [
        {"type": "conv2d", "out_channels": 5, "kernel_size": 3, "padding": 1, "activation": "relu"},
        {"type": "flatten"}, {"type": "linear", "out_features": 7, "activation": "tanh"}]}
    x = np.random.default_rng(2).normal(size=(16, 3, 4, 4)).astype(np.float32)
    remote = client.evaluate(spec, x, statistics=True).stats
    module = compile_spec(spec, device="cpu").eval()
    from specbuilder.stats import ActivationMonitor

    with ActivationMonitor(module) as monitor, torch.inference_mode():
        module(torch.from_numpy(x))
        local = monitor.stats()
    assert [s.units for s in remote] == [s.units for s in local] == [5, 7]  # channels of the conv, features of the linear
    assert [s.histogram.scale for s in remote] == [s.histogram.scale for s in local] == ["symlog", "linear"]  # type: ignore[union-attr]
    assert [s.histogram.edges for s in remote] == [s.histogram.edges for s in local]  # type: ignore[union-attr]
