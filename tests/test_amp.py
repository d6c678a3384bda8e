"""Mixed precision on the CPU, for real: torch's CPU autocast runs bfloat16 and float16 alike.

Training under ``amp`` reaches the full-precision accuracy band; the forward really runs in the
half type; fp16's loss scale neither shows in the gradient statistics nor counts as divergence
until it collapses. Statistics of half-precision activations are those of the same values in
float32, and the native kernel is what computes them. Evaluate and StreamEvaluate take ``amp``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from server_helpers import SPIRALS, batch, rpc_error, spec_source
from specbuilder.compiler import compile_spec
from specbuilder.devices import AMP_DTYPES, amp_dtype, to_device
from specbuilder.stats import ActivationMonitor, native
from specbuilder.stats import monitor as monitor_module
from specbuilder.training import ConfigError, StatsEvent, parse_config, train, train_events
from specbuilder_client import Client, InvalidArgument
from specbuilder_server import RunningServer
from specbuilder_wire.v1 import service_pb2

AMPS = tuple(AMP_DTYPES)
NEEDS_COMPILER = pytest.mark.skipif(native.compiler() is None, reason="no native kernel here")
BACKENDS = (pytest.param("native", marks=NEEDS_COMPILER), "torch")
LESSON = {"epochs": 30, "batch_size": 64, "lr": 0.02, "lr_schedule": "cosine"}
"""The spirals lesson's configuration (test_training): ReLU reaches 95% in full precision."""


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(activation: str = "relu", inputs: int = 2, outputs: int = 2, width: int = 64) -> dict[str, Any]:
    layers: list[dict[str, Any]] = [{"type": "linear", "out_features": width, "activation": activation}] * 2
    return {"input_shape": [inputs], "layers": [*layers, {"type": "linear", "out_features": outputs, "name": "out"}]}


# --- configuration -----------------------------------------------------------------------------


def test_amp_is_a_config_choice_and_names_resolve() -> None:
    assert parse_config({}).amp is None and parse_config({"amp": "bf16"}).amp == "bf16"
    with pytest.raises(ConfigError) as caught:
        parse_config({"amp": "fp8"})
    assert caught.value.errors() == [{"path": "amp", "message": "must be one of 'bf16' or 'fp16', got 'fp8'", "type": "literal_error"}]
    assert amp_dtype(None) is None and amp_dtype("bf16") is torch.bfloat16 and amp_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="amp must be 'bf16', 'fp16' or None"):
        amp_dtype("float16")


def test_moving_to_the_cpu_copies_nothing() -> None:
    x = torch.randn(4, 3)
    assert to_device(x, torch.device("cpu")) is x and to_device(x, torch.device("cpu"), torch.float32) is x
    assert to_device(x, torch.device("cpu"), torch.float64).dtype == torch.float64


# --- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("amp", AMPS)
def test_mixed_precision_trains_spirals_to_the_full_precision_band(amp: str) -> None:
    module = compile_spec(mlp(), device="cpu", seed=0)
    seen: set[torch.dtype] = set()
    module.get_submodule("out").register_forward_hook(lambda _m, _a, y: seen.add(y.dtype))
    result = train(module, "spirals", {**LESSON, "amp": amp})
    assert result.status == "completed", result.reason
    assert result.final.accuracy is not None and result.final.accuracy >= 0.95
    assert all(m.accuracy is not None and math.isfinite(m.loss) for m in result.history)
    assert seen == {AMP_DTYPES[amp]}, "training steps, validation and the final pass all ran in the half type"
    assert next(result.module.parameters()).dtype == torch.float32, "parameters keep their own dtype"


def test_the_loss_scale_does_not_show_in_gradient_statistics() -> None:
    """fp16 backward passes carry the loss scale (2**16); the recorded gradient norms are the true ones."""
    config = {"stats_every": 1, "epochs": 1, "seed": 3}
    first = {amp: next(e for e in train_events(mlp("tanh", width=32), "spirals", {**config, "amp": amp}) if isinstance(e, StatsEvent))
             for amp in (None, "fp16")}
    for full, half in zip(first[None].layers, first["fp16"].layers, strict=True):
        assert full.grad_norm is not None and half.grad_norm == pytest.approx(full.grad_norm, rel=0.02)


def test_fp16_overflow_that_the_scale_cannot_absorb_is_divergence() -> None:
    """Gradients beyond float16's range at every step: each step is skipped and the scale halves;
    the loss stays finite, so only the collapsed scale tells, and the run says so."""
    module = compile_spec(mlp("tanh", inputs=1, outputs=1, width=8), device="cpu", seed=0)
    with torch.no_grad():
        module.get_submodule("out").weight.mul_(1e4)
    before = module.get_submodule("out").weight.clone()
    result = train(module, "sine", {"amp": "fp16", "optimizer": "sgd", "lr": 0.01, "epochs": 3})
    assert result.status == "diverged"
    assert result.reason.startswith("gradients overflowed float16 at every step until the loss scale fell to 0.5 by step 18")
    assert result.steps == 18 and torch.equal(module.get_submodule("out").weight, before), "every overflowing step was skipped"
    assert all(math.isfinite(m.loss) for m in result.history)


def test_fp16_divergence_of_the_loss_says_what_to_try() -> None:
    result = train(mlp("identity", inputs=1, outputs=1, width=8), "sine", {"amp": "fp16", "optimizer": "sgd", "lr": 1000.0, "epochs": 5})
    assert result.status == "diverged"
    assert result.reason.startswith("loss became ") and result.reason.endswith("amp 'bf16' has float32's range")


# --- statistics ---------------------------------------------------------------------------------


STATS_SPEC: dict[str, Any] = {
    "input_shape": [12],
    "layers": [
        {"type": "linear", "out_features": 16, "name": "fc1", "activation": "relu"},
        {"type": "linear", "out_features": 16, "name": "fc2", "activation": "tanh"},
        {"type": "linear", "out_features": 6, "name": "fc3", "activation": {"type": "softmax", "dim": 1}},
    ],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("amp", AMPS)
def test_statistics_of_a_half_forward_are_those_of_its_values_in_float32(amp: str, backend: str) -> None:
    """The monitor on an autocast forward, against a float32 model whose every layer is made to
    output exactly what the half forward produced (widened): the same statistics, to the bit."""
    x = torch.randn(96, 12, generator=torch.Generator().manual_seed(0)) * 3
    half = compile_spec(STATS_SPEC, device="cpu", seed=0)
    produced: dict[str, torch.Tensor] = {}
    for name, child in half.named_children():
        child.register_forward_hook(lambda _m, _a, y, name=name: produced.__setitem__(name, y))
    with ActivationMonitor(half, layers="all", backend=backend) as watched, torch.no_grad(), torch.autocast("cpu", dtype=AMP_DTYPES[amp]):
        half(x)
    assert AMP_DTYPES[amp] in {y.dtype for y in produced.values()}, "the forward really ran in the half type"
    replay = compile_spec(STATS_SPEC, device="cpu", seed=0)
    for name, child in replay.named_children():
        child.register_forward_hook(lambda _m, _a, _y, name=name: produced[name].float())
    with ActivationMonitor(replay, layers="all", backend=backend) as reference, torch.no_grad():
        replay(x)
    assert watched.stats() == reference.stats()


@NEEDS_COMPILER
def test_the_native_kernel_receives_float32_from_a_half_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[torch.dtype] = []
    real = monitor_module.native_update

    def recording(probe: Any, config: Any, x: torch.Tensor, y: torch.Tensor) -> None:
        received.append(y.dtype)
        real(probe, config, x, y)

    monkeypatch.setattr(monitor_module, "native_update", recording)
    model = compile_spec(STATS_SPEC, device="cpu", seed=0)
    with ActivationMonitor(model, layers="all", backend="native"), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(8, 12))
    assert received == [torch.float32] * len(STATS_SPEC["layers"]) * 2


# --- the service -------------------------------------------------------------------------------


X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)


@pytest.mark.parametrize("amp", AMPS)
def test_evaluate_and_stream_evaluate_in_mixed_precision(server: RunningServer, amp: str) -> None:
    with Client(server.address, timeout=60) as client:
        full = client.evaluate(SPIRALS, X, statistics=True)
        half = client.evaluate(SPIRALS, X, statistics=True, amp=amp)
        assert half.outputs is not None and full.outputs is not None
        assert half.outputs.dtype == (np.float16 if amp == "fp16" else np.float32)  # bfloat16 arrives widened
        np.testing.assert_allclose(half.outputs.astype(np.float32), full.outputs, atol=0.05, rtol=0.05)
        assert [s.name for s in half.stats] == [s.name for s in full.stats] and half.stats[0].count == full.stats[0].count
        stream = client.evaluate_stream(SPIRALS, [X[:32], X[32:]], statistics=True, amp=amp)
        outputs = list(stream)
        np.testing.assert_array_equal(np.concatenate(outputs), half.outputs)
        assert stream.summary.rows == len(X)
        facts = [[(s.name, s.count, s.min, s.max, s.histogram) for s in stats] for stats in (stream.summary.stats, half.stats)]
        assert facts[0] == facts[1], "two half batches, the statistics of the one"


def test_an_unknown_amp_is_refused_at_its_path(server: RunningServer, stub: Any) -> None:
    failure = rpc_error(lambda: stub.Evaluate(service_pb2.EvaluateRequest(
        spec=spec_source(SPIRALS), input=batch(X), options=service_pb2.EvaluateOptions(amp="fp8"))))
    assert failure.fields == ["options.amp"] and "must be 'bf16', 'fp16' or empty (full precision), got 'fp8'" in failure.message
    with Client(server.address, timeout=60) as client, pytest.raises(InvalidArgument) as caught:
        list(client.evaluate_stream(SPIRALS, [X], amp="half"))
    assert [v.path for v in caught.value.violations] == ["start.options.amp"]


def test_train_through_the_service_in_mixed_precision(server: RunningServer) -> None:
    with Client(server.address, timeout=60) as client:
        result = client.train(SPIRALS, "spirals", amp="bf16", epochs=2, stats_every=5).result()
        assert result.status == "completed", result.reason
        assert client.get_model(result.model_id).config["amp"] == "bf16"
