"""Everything on a CUDA device, end to end; every test here is marked ``cuda`` and skips without one.

Compiled models give the CPU's outputs; training runs in full precision, bf16 and fp16 with no
host sync between reports; statistics kept on the device equal the CPU's on the same values;
a server started with ``--device cuda`` evaluates and trains; the store loads onto the device.
Other CUDA tests live with their subject: ``test_compiler.py`` (both styles run on CUDA),
``test_training.py`` (training and divergence on CUDA), ``test_store.py`` (load onto CUDA).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from server_helpers import SPIRALS, server_process
from specbuilder.compiler import STYLES, compile_spec
from specbuilder.devices import AMP_DTYPES, DeviceTimer, to_device
from specbuilder.stats import ActivationMonitor, LayerStats
from specbuilder.stats.accumulators import Accumulators
from specbuilder.store import ModelStore
from specbuilder.training import FinishedEvent, StartedEvent, StatsEvent, train, train_events
from specbuilder.training import loop
from specbuilder_client import Client

pytestmark = pytest.mark.cuda

CNN: dict[str, Any] = {
    "name": "cnn",
    "input_shape": [3, 12, 12],
    "layers": [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "name": "conv1"},
        {"type": "batch_norm2d", "name": "bn1", "activation": "relu"},
        {"type": "max_pool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "activation": "tanh"},
        {"type": "flatten"},
        {"type": "linear", "out_features": 16, "activation": "leaky_relu"},
        {"type": "dropout", "p": 0.3},
        {"type": "linear", "out_features": 5, "activation": {"type": "softmax", "dim": 1}},
    ],
}
LESSON = {"epochs": 30, "batch_size": 64, "lr": 0.02, "lr_schedule": "cosine"}
REL = 1e-6
"""Sums of float64 accumulators reduced in another order on the device."""


@pytest.fixture(autouse=True)
def exact_float32() -> Iterator[None]:
    """TF32 off, so CUDA matmuls and convolutions round as float32 does on the CPU."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def mlp(activation: str = "relu", width: int = 64) -> dict[str, Any]:
    layers: list[dict[str, Any]] = [{"type": "linear", "out_features": width, "activation": activation}] * 2
    return {"input_shape": [2], "layers": [*layers, {"type": "linear", "out_features": 2, "name": "out"}]}


def assert_stats_close(a: list[LayerStats], b: list[LayerStats]) -> None:
    """Counts, histograms, extremes and fractions exactly; float64 sums to rounding."""
    assert len(a) == len(b)
    for left, right in zip(a, b):
        one, other = left.model_dump(), right.model_dump()
        for key in ("mean", "std", "grad_norm", "entropy", "max_probability"):
            x, y = one.pop(key), other.pop(key)
            assert (x is None) == (y is None), key
            if x is not None:
                assert x == pytest.approx(y, rel=REL, abs=1e-12), (left.name, key)
        assert one == other


def replay(spec: dict[str, Any], produced: dict[str, torch.Tensor], style: str = "sequential") -> nn.Module:
    """A CPU float32 model whose every layer outputs exactly ``produced[name]`` (moved and widened)."""
    model = compile_spec(spec, style, device="cpu", seed=0).eval()
    for name, child in model.named_children():
        child.register_forward_hook(lambda _m, _a, _y, name=name: produced[name].float().cpu())
    return model


def capture(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every child's latest output, by name."""
    produced: dict[str, torch.Tensor] = {}
    for name, child in model.named_children():
        child.register_forward_hook(lambda _m, _a, y, name=name: produced.__setitem__(name, y.detach()))
    return produced


# --- compile and move ----------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_compiled_on_cuda_gives_the_cpu_outputs(style: str) -> None:
    cpu = compile_spec(CNN, style, device="cpu", seed=0).eval()
    gpu = compile_spec(CNN, style, device="cuda", seed=0).eval()
    assert {p.device for p in gpu.parameters()} == {torch.device("cuda", 0)}
    for key, value in cpu.state_dict().items():
        torch.testing.assert_close(gpu.state_dict()[key].cpu(), value, rtol=0, atol=0)
    x = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-4, atol=1e-5)
    empty = compile_spec(CNN, style, device="cuda:0", init=False)
    assert {p.device for p in empty.parameters()} == {torch.device("cuda", 0)}


def test_host_batches_reach_the_device_through_pinned_memory() -> None:
    x = torch.randn(32, 7, dtype=torch.float64)
    for dtype in (None, torch.float32, torch.bfloat16):
        moved = to_device(x, torch.device("cuda"), dtype)
        assert moved.device.type == "cuda" and moved.dtype == (dtype or torch.float64)
        torch.testing.assert_close(moved.cpu(), x.to(dtype or torch.float64), rtol=0, atol=0)
    widened = to_device(x.half(), torch.device("cuda"), torch.float32)
    assert widened.dtype == torch.float32 and torch.equal(widened.cpu(), x.half().float())
    on_device = to_device(widened, torch.device("cuda", 0), torch.float32)
    assert on_device is widened


def test_device_timer_reads_the_device_time_once() -> None:
    timer = DeviceTimer(torch.device("cuda"))
    a = torch.randn(512, 512, device="cuda")
    for _ in range(3):
        token = timer.start()
        a = a @ a / 512
        timer.stop(token)
    assert timer.seconds > 0 and math.isfinite(timer.seconds)


# --- training ---------------------------------------------------------------------------------


@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_trains_spirals_on_cuda(amp: str | None) -> None:
    module = compile_spec(mlp(), device="cpu", seed=0)
    seen: set[torch.dtype] = set()
    module.get_submodule("out").register_forward_hook(lambda _m, _a, y: seen.add(y.dtype))
    events = list(train_events(module, "spirals", {**LESSON, "device": "cuda", "amp": amp, "stats_every": 10}))
    started, finished = events[0], events[-1]
    assert isinstance(started, StartedEvent) and started.device == "cuda:0"
    assert isinstance(finished, FinishedEvent) and finished.status == "completed", finished.reason
    result = finished.result
    assert next(result.module.parameters()).is_cuda
    assert result.final.accuracy is not None and result.final.accuracy >= 0.9
    assert seen == {AMP_DTYPES[amp] if amp else torch.float32}
    stats = [e for e in events if isinstance(e, StatsEvent)]
    assert stats and all(layer.grad_norm is not None and math.isfinite(layer.grad_norm) for e in stats for layer in e.layers)


def _lines(function: Any) -> tuple[str, range]:
    lines, first = inspect.getsourcelines(function)
    return inspect.getsourcefile(inspect.unwrap(function)) or "", range(first, first + len(lines))


@pytest.mark.parametrize("amp", [None, "bf16"])
def test_steps_between_reports_never_wait_for_the_device(amp: str | None) -> None:
    """With sync debugging on, every synchronizing call warns from the line that made it: each one
    must be an intended read (the divergence check, validation, a statistics report), and the
    divergence check must read once per ``DIVERGENCE_CHECK`` steps (and at an epoch's end) only.
    fp16 is left out: ``GradScaler.step`` reads whether a step overflowed, once per step."""
    allowed = {name: _lines(function) for name, function in
               (("divergence", loop._divergence), ("validation", loop.Run.assess), ("report", Accumulators.host))}
    events = train_events(mlp(), "spirals", {"epochs": 3, "device": "cuda", "amp": amp, "stats_every": 7})
    assert isinstance(next(events), StartedEvent)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rest = list(events)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    finished = rest[-1]
    assert isinstance(finished, FinishedEvent) and finished.status == "completed"
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert syncs, "sync debugging reported nothing: the check itself is broken"
    where: dict[str, int] = {}
    for warning in syncs:
        place = next((name for name, (path, lines) in allowed.items() if Path(warning.filename) == Path(path) and warning.lineno in lines), None)
        assert place is not None, f"a hidden sync at {warning.filename}:{warning.lineno}"
        where[place] = where.get(place, 0) + 1
    steps, epochs = finished.steps, finished.epochs
    assert where.get("divergence", 0) <= math.ceil(steps / loop.DIVERGENCE_CHECK) + epochs


def test_fp16_loss_scale_is_taken_out_of_the_gradient_statistics_on_cuda() -> None:
    config = {"stats_every": 1, "epochs": 1, "seed": 3, "device": "cuda"}
    first = {amp: next(e for e in train_events(mlp("tanh", 32), "spirals", {**config, "amp": amp}) if isinstance(e, StatsEvent))
             for amp in (None, "fp16")}
    for full, half in zip(first[None].layers, first["fp16"].layers, strict=True):
        assert full.grad_norm is not None and half.grad_norm == pytest.approx(full.grad_norm, rel=0.02)


# --- statistics --------------------------------------------------------------------------------


def awkward(n: int) -> torch.Tensor:
    x = torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(1)) * 3
    flat = x.view(-1)
    flat[::97] = 0.0
    flat[5], flat[17], flat[29] = math.nan, math.inf, -math.inf
    return x


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_statistics_on_cuda_equal_the_cpu_statistics_of_the_same_values(style: str, amp: str | None) -> None:
    """The monitor on a CUDA forward (its accumulators on the device) against the CPU monitor
    on a model made to output exactly the values the CUDA layers produced."""
    gpu = compile_spec(CNN, style, device="cuda", seed=0).eval()
    produced = capture(gpu) if style == "sequential" else {}
    if style == "functional":
        names = [node.name for node in gpu.spec.nodes]
        gpu.register_tap(lambda index, _x, y: produced.__setitem__(names[index], y.detach()))
    x = awkward(24)
    precision = torch.autocast("cuda", dtype=AMP_DTYPES[amp]) if amp else torch.autocast("cuda", enabled=False)
    with ActivationMonitor(gpu, layers="all") as watched, torch.no_grad(), precision:
        gpu(x.cuda())
    assert {state.counts.device.type for state in watched.state()} == {"cuda"}
    reference_model = replay(CNN, produced)
    with ActivationMonitor(reference_model, layers="all") as reference, torch.no_grad():
        reference_model(x)
    assert_stats_close(watched.stats(), reference.stats())


def test_gradient_statistics_on_cuda_equal_the_cpu_ones() -> None:
    spec = mlp("tanh", 16)
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(2))
    results = []
    for device in ("cpu", "cuda"):
        model = compile_spec(spec, device=device, seed=0)
        with ActivationMonitor(model, layers="all") as monitor:
            model(x.to(device)).square().sum().backward()
        results.append(monitor.stats())
    for cpu, gpu in zip(*results):
        assert cpu.grad_norm is not None and gpu.grad_norm == pytest.approx(cpu.grad_norm, rel=1e-4)
        assert gpu.count == cpu.count and gpu.mean == pytest.approx(cpu.mean, rel=1e-4, abs=1e-6)


# --- the store and the service ------------------------------------------------------------------


def test_a_model_trained_on_cuda_is_stored_and_loads_on_either_device(tmp_path: Path) -> None:
    result = train(mlp(), "spirals", {"epochs": 2, "device": "cuda"})
    x = torch.randn(8, 2)
    with ModelStore(tmp_path / "store") as store:
        record = store.save(result.module.eval())
        loaded = {device: store.load(record.id, device=device).eval() for device in ("cpu", "cuda")}
    assert next(loaded["cuda"].parameters()).device == torch.device("cuda", 0)
    with torch.no_grad():
        expected = result.module(x.cuda()).cpu()
        torch.testing.assert_close(loaded["cuda"](x.cuda()).cpu(), expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(loaded["cpu"](x), expected, rtol=1e-5, atol=1e-6)


def test_a_server_started_with_device_cuda_evaluates_and_trains(tmp_path: Path) -> None:
    """A spec's weights are the server's own draw; a stored model's are exported and checked here."""
    x = np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32)
    with server_process(tmp_path / "store", "--device", "cuda") as server, Client(server.address, timeout=120) as client:
        result = client.evaluate(SPIRALS, x, statistics=True)
        assert result.outputs is not None and result.outputs.shape == (256, 2) and np.isfinite(result.outputs).all()
        assert result.stats and result.compute_seconds > 0
        for amp in AMP_DTYPES:
            half = client.evaluate(SPIRALS, x, statistics=True, amp=amp)
            np.testing.assert_allclose(np.asarray(half.outputs, dtype=np.float32), result.outputs, atol=0.05, rtol=0.05)
        stream = client.evaluate_stream(SPIRALS, [x[:100], x[100:]], statistics=True, skip_output=True)
        assert list(stream) == [] and stream.summary.rows == len(x) and stream.summary.compute_seconds > 0
        run = client.train(SPIRALS, "spirals", epochs=3, stats_every=5).result()
        assert run.status == "completed", run.reason
        stored = client.evaluate(run.model_id, x)
        spec, weights = client.export_model(run.model_id)
        expected = compile_spec(spec, device="cpu")
        expected.load_state_dict({key: torch.from_numpy(value) for key, value in weights.items()})
        with torch.no_grad():
            np.testing.assert_allclose(stored.outputs, expected.eval()(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
