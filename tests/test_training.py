"""The training engine: the lesson in numbers, determinism, how runs end, and every registry entry."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from specbuilder.compiler import STYLES, compile_spec
from specbuilder.datasets import DATASETS, DataError, Dataset, load_dataset
from specbuilder.errors import SpecError
from specbuilder.training import (
    EVENTS, LOSSES, OPTIMIZERS, SCHEDULES, CancelToken, ConfigError, EpochEvent, FinishedEvent, StartedEvent,
    StatsEvent, TrainConfig, in_process, launcher_for, parse_config, train, train_events,
)
from specbuilder.training import distributed
from specbuilder.training.choices import Choice
from specbuilder.training.losses import LossKind


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(activation: Any = "relu", inputs: int = 2, outputs: int = 2, width: int = 32, depth: int = 2, last: str | None = None) -> dict[str, Any]:
    """``depth`` hidden layers of ``width`` with ``activation``, then a linear output (and ``last``)."""
    layers: list[dict[str, Any]] = [{"type": "linear", "out_features": width, "activation": activation}] * depth
    layers.append({"type": "linear", "out_features": outputs, **({"activation": last} if last else {})})
    return {"input_shape": [inputs], "layers": layers}


def blobs(n: int = 150) -> Dataset:
    return load_dataset("blobs", n=n)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


# --- configuration ---------------------------------------------------------------------------


def test_defaults_validate_and_round_trip_through_json() -> None:
    config = TrainConfig()
    assert config.optimizer.type == "adam" and config.loss is None and config.lr_schedule.type == "constant"
    assert parse_config(config.model_dump_json()) == config
    assert parse_config(None) == config


@pytest.mark.parametrize(("field", "registry"), [("optimizer", OPTIMIZERS), ("loss", LOSSES), ("lr_schedule", SCHEDULES)])
def test_every_registry_name_is_accepted_as_name_and_object(field: str, registry: dict[str, Choice]) -> None:
    described = TrainConfig.model_json_schema()["properties"][field]["description"]
    for name in registry:
        assert name in described
        by_name = parse_config({field: name})
        assert getattr(by_name, field).type == name
        assert parse_config({field: {"type": name}}) == by_name


def test_config_errors_list_every_problem_at_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({
            "epochs": 0, "batch_size": 1.5, "lr": -1, "optimizer": {"type": "sgd", "momentum": 1.5, "betas": [0.9, 0.99]},
            "loss": "crossentropy", "lr_schedule": {"type": "step", "step_size": 0}, "validation_split": 1.0,
            "device": "gpu", "style": "graph", "max_seconds": 0, "stats_evry": 10,
        })
    assert caught.value.errors() == [
        {"path": "epochs", "message": "must be >= 1, got 0", "type": "greater_than_equal"},
        {"path": "batch_size", "message": "must be an integer, got float 1.5", "type": "int_type"},
        {"path": "lr", "message": "must be > 0, got -1", "type": "greater_than"},
        {"path": "optimizer.momentum", "message": "must be < 1, got 1.5", "type": "less_than"},
        {"path": "optimizer.betas", "message": "unknown field 'betas'", "type": "extra_forbidden"},
        {"path": "loss", "message": "unknown loss 'crossentropy'; did you mean 'cross_entropy'?", "type": "unknown_choice"},
        {"path": "lr_schedule.step_size", "message": "must be >= 1, got 0", "type": "greater_than_equal"},
        {"path": "validation_split", "message": "must be < 1, got 1", "type": "less_than"},
        {"path": "device", "message": "must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'", "type": "device"},
        {"path": "style", "message": "must be one of 'sequential' or 'functional', got 'graph'", "type": "literal_error"},
        {"path": "max_seconds", "message": "must be > 0, got 0", "type": "greater_than"},
        {"path": "stats_evry", "message": "unknown field 'stats_evry'; did you mean 'stats_every'?", "type": "extra_forbidden"},
    ]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"optimizer": {"type": "sgd", "nesterov": True}},
         [{"path": "optimizer.nesterov", "message": "needs momentum > 0, got momentum 0", "type": "invalid_combination"}]),
        ({"optimizer": {"momentum": 0.9}},
         [{"path": "optimizer.type", "message": "is required: the optimizer's name, such as 'sgd'", "type": "missing"}]),
        ({"optimizer": 3},
         [{"path": "optimizer", "message": "must be a name such as 'sgd' or an object with a 'type', got int 3", "type": "model_attributes_type"}]),
        ({"lr_schedule": "linear"},
         [{"path": "lr_schedule", "message": "unknown schedule 'linear'; choose from constant, step, cosine", "type": "unknown_choice"}]),
        ({"loss": {"type": "huber", "delta": 0}, "lr": math.nan},
         [{"path": "lr", "message": "must be a finite number, got nan", "type": "finite_number"},
          {"path": "loss.delta", "message": "must be > 0, got 0", "type": "greater_than"}]),
    ],
)
def test_config_error_cases(config: dict[str, Any], expected: list[dict[str, str]]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config)
    assert caught.value.errors() == expected
    assert isinstance(caught.value, SpecError)


def test_schedule_rates() -> None:
    def rates(schedule: dict[str, Any]) -> list[float]:
        config = parse_config({"lr": 0.1, "epochs": 4, "lr_schedule": schedule})
        return [round(config.lr_at(epoch), 6) for epoch in range(4)]

    assert rates({"type": "constant"}) == [0.1] * 4
    assert rates({"type": "step", "step_size": 2, "gamma": 0.5}) == [0.1, 0.1, 0.05, 0.05]
    assert rates({"type": "cosine", "eta_min": 0.02}) == [0.1, 0.088284, 0.06, 0.031716]


# --- the lesson --------------------------------------------------------------------------------


def test_relu_learns_spirals_and_identity_cannot() -> None:
    """Without a non-linearity a deep net is one linear map: on two spirals it stays near chance."""
    config = {"epochs": 30, "batch_size": 64, "lr": 0.02, "lr_schedule": "cosine"}
    relu = train(mlp("relu", width=64), "spirals", config)
    identity = train(mlp("identity", width=64), "spirals", config)
    assert relu.status == identity.status == "completed"
    assert relu.final.split == "validation" and relu.final.samples == 200
    assert relu.final.accuracy is not None and relu.final.accuracy >= 0.95
    assert identity.final.accuracy is not None and identity.final.accuracy <= 0.75


# --- determinism -------------------------------------------------------------------------------


def dropout_net() -> dict[str, Any]:
    spec = mlp("tanh", width=16)
    spec["layers"].insert(1, {"type": "dropout", "p": 0.2})
    return spec


def test_same_seed_gives_bitwise_identical_weights_in_either_style() -> None:
    config = {"epochs": 2, "seed": 7, "batch_size": 16}
    runs = [train(dropout_net(), "moons", {**config, "style": style}) for style in ("sequential", "sequential", "functional")]
    first = weights(runs[0].module)
    for run in runs[1:]:
        again = weights(run.module)
        assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
        assert [m.loss for m in run.history] == [m.loss for m in runs[0].history]
    other = weights(train(dropout_net(), "moons", {**config, "seed": 8}).module)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_training_leaves_the_global_generator_alone() -> None:
    state = torch.get_rng_state()
    train(dropout_net(), "moons", {"epochs": 1})
    assert torch.equal(torch.get_rng_state(), state)


# --- how runs end ------------------------------------------------------------------------------


def test_divergence_is_reported_not_raised() -> None:
    result = train(mlp("identity", inputs=1, outputs=1, width=8, depth=1), "sine", {"optimizer": "sgd", "lr": 1000.0, "epochs": 5})
    assert result.status == "diverged" and result.history == []
    assert not result.keeps_weights
    assert result.reason == f"loss became inf at step {result.steps} (epoch 1); lower lr or set grad_clip"
    assert 1 < result.steps < 13
    assert not math.isfinite(result.final.loss)
    assert result.stats[0].std is not None and result.stats[0].std > 1e6, "the final statistics show the blow-up"


def test_grad_clip_keeps_the_same_run_finite() -> None:
    result = train(mlp("tanh", inputs=1, outputs=1, width=8, depth=1), "sine", {"optimizer": "sgd", "lr": 1.0, "epochs": 3, "grad_clip": 0.1})
    assert result.status == "completed" and math.isfinite(result.final.loss) and result.keeps_weights


def test_cancel_from_a_callback_stops_within_one_step() -> None:
    token = CancelToken()
    seen: list[int] = []

    def on_event(event: Any) -> None:
        if isinstance(event, StatsEvent):
            seen.append(event.step)
            token.cancel("enough")

    result = train(mlp(outputs=3), blobs(), {"epochs": 50, "stats_every": 3, "batch_size": 8}, on_event=on_event, cancel=token)
    assert seen == [3]
    assert (result.status, result.reason, result.steps, result.epochs) == ("cancelled", "enough after 3 steps", 3, 0)
    assert result.keeps_weights, "three steps were taken: what they learned is kept"


def test_cancel_from_another_thread_stops_within_one_step() -> None:
    token = CancelToken()
    reached, cancelled = threading.Event(), threading.Event()

    def canceller() -> None:
        reached.wait(timeout=60)
        token.cancel()
        cancelled.set()

    thread = threading.Thread(target=canceller)
    thread.start()

    def on_event(event: Any) -> None:
        if isinstance(event, StatsEvent) and event.step == 4:
            reached.set()
            cancelled.wait(timeout=60)

    result = train(mlp(outputs=3), blobs(), {"epochs": 50, "stats_every": 2, "batch_size": 8}, on_event=on_event, cancel=token)
    thread.join()
    assert (result.status, result.reason, result.steps) == ("cancelled", "cancelled by the caller after 4 steps", 4)


def test_a_token_cancelled_before_the_start_stops_before_the_first_step() -> None:
    token = CancelToken()
    token.cancel("not now")
    token.cancel("too late: the first reason wins")
    result = train(mlp(outputs=3), blobs(), cancel=token)
    assert (result.status, result.reason, result.steps, result.history) == ("cancelled", "not now after 0 steps", 0, [])
    assert not result.keeps_weights, "the weights are the initialization"
    assert result.final.accuracy is not None and result.stats


def test_max_seconds_ends_the_run_as_cancelled() -> None:
    result = train(mlp(outputs=3), blobs(), {"epochs": 1_000_000, "max_seconds": 0.2})
    assert result.status == "cancelled"
    assert result.reason.startswith("time limit of 0.2 s reached after ") and result.reason.endswith(f" {result.steps} steps")


# --- the step activation -------------------------------------------------------------------------


def step_net(surrogate: str) -> dict[str, Any]:
    return {
        "input_shape": [2],
        "layers": [
            {"type": "linear", "out_features": 16, "name": "hidden", "activation": {"type": "step", "surrogate": surrogate}},
            {"type": "linear", "out_features": 3, "name": "out"},
        ],
    }


@pytest.mark.parametrize(("surrogate", "hidden_moves"), [("none", False), ("ste", True)])
def test_step_network_trains_without_raising(surrogate: str, hidden_moves: bool) -> None:
    """The step's true gradient is zero: weights before it stay put unless 'ste' passes it through."""
    module = compile_spec(step_net(surrogate), device="cpu", seed=0)
    before = weights(module)
    result = train(module, blobs(), {"epochs": 3, "lr": 0.05})
    after = weights(result.module)
    assert result.status == "completed" and result.module is module
    assert not torch.equal(before["out.weight"], after["out.weight"])
    assert torch.equal(before["hidden.weight"], after["hidden.weight"]) is not hidden_moves
    assert torch.equal(before["hidden.bias"], after["hidden.bias"]) is not hidden_moves
    assert result.history[-1].loss < result.history[0].loss
    assert result.stats[0].saturated_fraction == (0.0 if hidden_moves else 1.0), "the flat region is measured"


# --- every registry entry ------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_trains(name: str) -> None:
    result = train(mlp(outputs=3), blobs(), {"optimizer": name, "lr": 0.05, "epochs": 4, "batch_size": 16})
    assert result.status == "completed"
    assert result.history[-1].loss < result.history[0].loss


def loss_setup(kind: LossKind) -> tuple[dict[str, Any], Dataset]:
    """A model and data each loss fits, read from the entry itself: its targets and its outputs."""
    last = {(0.0, 1.0): "sigmoid", (-math.inf, 0.0): "log_softmax"}.get(kind.output_range)
    if kind.target == "class" or kind.target_range != (-math.inf, math.inf):
        return mlp("relu", outputs=3, last=last), blobs()
    return mlp("tanh", inputs=1, outputs=1, last=last), load_dataset("sine", n=150)


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_trains(name: str) -> None:
    spec, data = loss_setup(LOSSES[name])
    events: list[Any] = []
    result = train(spec, data, {"loss": name, "lr": 0.02, "epochs": 4, "batch_size": 16}, on_event=events.append)
    assert isinstance(events[0], StartedEvent) and events[0].loss == name
    assert result.status == "completed"
    assert result.history[-1].loss < result.history[0].loss
    assert (result.final.accuracy is None) is (data.task == "regression")


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_sets_the_rate_each_epoch(name: str) -> None:
    config = parse_config({"lr_schedule": name, "epochs": 3, "lr": 0.05})
    result = train(mlp(outputs=3), blobs(60), config)
    assert [m.lr for m in result.history] == [config.lr_at(epoch) for epoch in range(3)]


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_trains(name: str) -> None:
    info = DATASETS[name]
    outputs = info.classes or 1
    result = train(mlp(inputs=math.prod(info.input_shape), outputs=outputs), load_dataset(name, n=200), {"epochs": 2})
    assert result.status == "completed" and result.dataset == name
    assert result.history[-1].loss < result.history[0].loss
    assert (result.final.accuracy is None) is (info.task == "regression")


# --- data meets model ------------------------------------------------------------------------------


def test_a_builtin_name_uses_the_config_seed() -> None:
    first = train(mlp(), "xor", {"epochs": 1, "seed": 1})
    again = train(mlp(), load_dataset("xor", seed=1), {"epochs": 1, "seed": 1})
    assert first.dataset == again.dataset == "xor"
    assert first.history[0].loss == again.history[0].loss


def test_npz_input(tmp_path: Path) -> None:
    data = blobs()
    path = tmp_path / "three_blobs.npz"
    np.savez(path, x=data.x, y=data.y)
    result = train(mlp(outputs=3), path, {"epochs": 2})
    assert result.status == "completed" and result.dataset == "three_blobs"


def test_digits_are_reshaped_to_the_spec_input_shape() -> None:
    cnn = {
        "input_shape": [1, 8, 8],
        "layers": [
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "activation": "relu"},
            {"type": "flatten"},
            {"type": "linear", "out_features": 10},
        ],
    }
    result = train(cnn, load_dataset("digits", n=300), {"epochs": 2})
    assert result.status == "completed" and result.history[-1].loss < result.history[0].loss


def test_without_a_validation_split_the_final_pass_uses_the_training_set() -> None:
    result = train(mlp(outputs=3), blobs(), {"epochs": 2, "validation_split": 0})
    assert [(m.val_loss, m.accuracy) for m in result.history] == [(None, None)] * 2
    assert result.final.split == "training" and result.final.samples == 150 and result.final.accuracy is not None


def test_tensors_are_accepted() -> None:
    data = blobs()
    result = train(mlp(outputs=3), (torch.from_numpy(data.x), torch.from_numpy(data.y)), {"epochs": 1})
    assert result.status == "completed" and result.dataset == "arrays"


def test_shape_mismatch_says_what_to_change() -> None:
    with pytest.raises(DataError) as caught:
        train(mlp(inputs=10, outputs=10), "digits")
    assert str(caught.value) == (
        "expected 10 features per sample; the spec's input_shape is [10], the data has shape [1797, 64] (64 per sample): "
        "set input_shape to match or reshape the data"
    )


@pytest.mark.parametrize(
    ("spec", "data", "config", "message"),
    [
        (mlp(outputs=3), "blobs", {"loss": "bce"},
         "loss: 'bce' needs outputs in [0, 1], but the model ends in linear (layers[2]) with outputs in [-inf, inf]; "
         "end the model in sigmoid, or use 'bce_with_logits' on raw scores"),
        (mlp(outputs=3), "blobs", {"loss": "nll"},
         "loss: 'nll' needs outputs in [-inf, 0], but the model ends in linear (layers[2]) with outputs in [-inf, inf]; "
         "end the model in log_softmax, or use 'cross_entropy' on raw scores"),
        (mlp(inputs=1, outputs=1), "sine", {"loss": "cross_entropy"},
         "loss: 'cross_entropy' needs integer class labels, but the targets are floats (regression); use mse, l1 or huber"),
        (mlp(outputs=1), "moons", {"loss": "cross_entropy"},
         "loss: 'cross_entropy' needs one output per class, but the model has 1 output; use bce_with_logits for two classes"),
    ],
)
def test_loss_and_model_mismatch_is_a_config_error(spec: dict[str, Any], data: str, config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        train(spec, data, config)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("spec", "data", "message"),
    [
        (mlp(outputs=2), "blobs", "labels go up to 2, but the model has 2 outputs: labels must be in [0, 1]"),
        (mlp(outputs=1), "blobs", "labels go up to 2, but the model has one output (class 1 above a threshold, class 0 below): labels must be in [0, 1]"),
        (mlp(inputs=1, outputs=2), "sine", "the model outputs [2] per sample, but the targets have shape [1000]; they must match"),
    ],
)
def test_targets_that_do_not_fit_the_model(spec: dict[str, Any], data: str, message: str) -> None:
    with pytest.raises(DataError) as caught:
        train(spec, data)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("spec", "data", "chosen"),
    [
        (mlp(outputs=3), "blobs", "cross_entropy"),
        (mlp(outputs=3, last="log_softmax"), "blobs", "nll"),
        (mlp(outputs=1), "moons", "bce_with_logits"),
        (mlp(outputs=1, last="sigmoid"), "moons", "bce"),
        (mlp(inputs=1, outputs=1), "sine", "mse"),
    ],
)
def test_the_loss_is_chosen_from_the_data_and_the_last_layer(spec: dict[str, Any], data: str, chosen: str) -> None:
    started = next(train_events(spec, data, {"epochs": 1}))
    assert isinstance(started, StartedEvent) and started.loss == chosen


# --- events, statistics and modules --------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_event_stream_and_json_round_trip(style: str) -> None:
    events = list(train_events(mlp(outputs=3), blobs(), {"epochs": 3, "stats_every": 4, "batch_size": 16, "style": style}))
    started, finished = events[0], events[-1]
    assert isinstance(started, StartedEvent) and isinstance(finished, FinishedEvent)
    assert (started.train_samples, started.val_samples, started.steps_per_epoch) == (120, 30, 8)
    assert [e.metrics.epoch for e in events if isinstance(e, EpochEvent)] == [1, 2, 3]
    stats = [e for e in events if isinstance(e, StatsEvent)]
    assert [(e.step, e.epoch) for e in stats] == [(4, 1), (8, 1), (12, 2), (16, 2), (20, 3), (24, 3)]
    assert all([layer.name for layer in e.layers] == ["relu_1", "relu_3"] for e in stats)
    # a window is its one monitored step: 16 samples, or the 8 left at the end of an epoch
    assert all(layer.count == (8 if e.step % 8 == 0 else 16) * 32 and layer.grad_norm for e in stats for layer in e.layers)
    for event in events:
        text = event.model_dump_json()
        assert EVENTS.validate_json(text).model_dump() == event.model_dump() and "result" not in json.loads(text)
    result = finished.result
    assert result.history == [e.metrics for e in events if isinstance(e, EpochEvent)]
    assert (result.steps, result.epochs, result.status) == (24, 3, "completed")
    assert result.reason == "trained 3 epochs (24 steps)"


def test_a_diverged_run_still_serializes() -> None:
    finished = list(train_events(mlp("identity", inputs=1, outputs=1, depth=1), "sine", {"optimizer": "sgd", "lr": 1000.0}))[-1]
    payload = json.loads(finished.model_dump_json())
    assert payload["status"] == "diverged" and payload["final"]["loss"] in ("Infinity", "NaN")
    with pytest.raises(ValueError, match="only the training process holds the result"):
        EVENTS.validate_json(finished.model_dump_json()).result  # type: ignore[union-attr]


def test_final_statistics_cover_the_activation_layers() -> None:
    spec = mlp("relu", outputs=3)
    result = train(spec, blobs(), {"epochs": 1})
    activations = [node.name for node in compile_spec(spec, device="cpu").spec.nodes if node.is_activation]
    assert [layer.name for layer in result.stats] == activations


def test_a_compiled_module_is_trained_in_place_and_a_plain_one_is_refused() -> None:
    module = compile_spec(mlp(outputs=3), style="functional", device="cpu", seed=3)
    result = train(module, blobs(), {"epochs": 1})
    assert result.module is module
    with pytest.raises(TypeError, match="takes a spec or a module compiled by specbuilder"):
        train(torch.nn.Linear(2, 3), blobs())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where CUDA is missing")
def test_an_unavailable_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        train(mlp(outputs=3), blobs(), {"device": "cuda"})
    assert caught.value.errors()[0]["path"] == "device"


@pytest.mark.cuda
def test_trains_and_detects_divergence_on_cuda() -> None:
    result = train(mlp(outputs=3), blobs(), {"device": "cuda", "epochs": 3, "stats_every": 2})
    assert result.status == "completed" and next(result.module.parameters()).is_cuda
    diverged = train(mlp("identity", inputs=1, outputs=1, depth=1), "sine", {"device": "cuda", "optimizer": "sgd", "lr": 1000.0})
    assert diverged.status == "diverged" and diverged.reason.startswith("loss became ")


# --- structure ---------------------------------------------------------------------------------


def test_the_loop_imports_nothing_distributed() -> None:
    """``loop`` is one process's training: DDP extends its ``Run`` from ``distributed``, never the other way."""
    code = "import sys, specbuilder.training.loop; print(' '.join(sorted(m for m in sys.modules if m.startswith('specbuilder.training'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "specbuilder.training.loop" in loaded
    assert "specbuilder.training.distributed" not in loaded and "specbuilder.training.launchers" not in loaded


def test_the_launcher_is_chosen_by_world_size_and_in_process_keeps_to_one() -> None:
    assert launcher_for(parse_config({})) is in_process
    chosen = launcher_for(parse_config({"world_size": 2}))
    assert isinstance(chosen, functools.partial) and chosen.func is distributed.launch_events
    with pytest.raises(ConfigError) as caught:
        next(train_events(mlp(outputs=3), blobs(), {"world_size": 2}, launcher=in_process))
    assert caught.value.errors()[0]["path"] == "world_size"
    config = {"epochs": 1, "seed": 4}
    given, default = train(mlp(outputs=3), blobs(), config, launcher=in_process), train(mlp(outputs=3), blobs(), config)
    assert given.history[0].loss == default.history[0].loss
