"""ActivationMonitor: statistics against a numpy reference, exact merging, both styles, both paths.

The registry drives the parametrization: every activation is checked against numpy on captured
inputs and outputs, every interval form of a flat region against the entry's own ``where``,
and the native kernel against the pure-torch path on layouts that exercise its vector and
scalar code (odd sizes, rows longer than a chunk, per-feature units).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from specbuilder.activations import ACTIVATIONS
from specbuilder.compiler import STYLES, compile_spec
from specbuilder.kinds import ActivationKind
from specbuilder.spec import parse_spec
from specbuilder.stats import ActivationMonitor, LayerState, LayerStats, merge_states
from specbuilder.stats import native
from specbuilder.stats.binning import BinScheme
from specbuilder.stats.probe import Probe
from specbuilder.stats.state import GRAD_NORM_SUM, GRAD_PASSES, HISTOGRAM, M2, MAX, MEAN, MIN
from specbuilder.stats.update import add_gradient

NEEDS_COMPILER = pytest.mark.skipif(
    native.compiler() is None or os.environ.get("SPECBUILDER_NATIVE") == "0", reason="no native kernel here: only the torch path runs"
)
BACKENDS = (pytest.param("native", marks=NEEDS_COMPILER), "torch")
REL = 1e-9


def activation_spec(kind: ActivationKind, shape: tuple[int, ...], params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    layer = {"type": kind.name, **(kind.example if params is None else params)}
    return {"input_shape": list(shape), "layers": [layer]}


def awkward_input(n: int, shape: tuple[int, ...], seed: int = 0, scale: float = 4.0) -> torch.Tensor:
    """Normal values with exact zeros, NaN and +-inf sprinkled in."""
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)) * scale
    flat = x.view(-1)
    flat[::97] = 0.0
    flat[5], flat[17], flat[29] = math.nan, math.inf, -math.inf
    return x


def run_monitor(model: torch.nn.Module, batches: list[torch.Tensor], **options: Any) -> ActivationMonitor:
    with ActivationMonitor(model, **options) as monitor:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    return monitor


def assert_states_equal(a: LayerState, b: LayerState) -> None:
    """Counts, bins, unit flags and extremes exactly; mean and M2 to float64 rounding."""
    assert torch.equal(a.counts, b.counts)
    assert torch.equal(a.alive, b.alive)
    assert a.moments[MIN] == b.moments[MIN] and a.moments[MAX] == b.moments[MAX]
    for i in (MEAN, M2):
        assert float(a.moments[i]) == pytest.approx(float(b.moments[i]), rel=REL, abs=1e-12)


def assert_stats_equal(a: LayerStats, b: LayerStats) -> None:
    left, right = a.model_dump(), b.model_dump()
    for key in ("mean", "std", "grad_norm", "entropy", "max_probability"):
        x, y = left.pop(key), right.pop(key)
        assert (x is None) == (y is None), key
        if x is not None:
            assert x == pytest.approx(y, rel=REL, abs=1e-12), key
    assert left == right


def reference(kind: ActivationKind, params: Mapping[str, Any], x: torch.Tensor, y: torch.Tensor, edges: list[float]) -> dict[str, Any]:
    """The statistics computed directly in numpy from the layer's input and output."""
    values = y.double().numpy().ravel()
    finite = values[np.isfinite(values)]
    flat = np.zeros(values.shape, dtype=bool)
    dead = 0.0
    if kind.flat is not None:
        flat = kind.flat.where(x, y, params).expand_as(y).numpy()
        dead = float(flat.reshape(y.shape[0], y.shape[1], -1).all(axis=(0, 2)).mean())
        flat = flat.ravel()
    bins = np.searchsorted(np.asarray(edges[1:-1]), finite, side="right")
    out = {
        "count": values.size,
        "nan_count": int(np.isnan(values).sum()),
        "inf_count": int(np.isinf(values).sum()),
        "mean": finite.mean(),
        "std": finite.std(),
        "min": finite.min(),
        "max": finite.max(),
        "zero_fraction": float((values == 0).mean()),
        "saturated_fraction": float(flat.mean()),
        "dead_fraction": dead,
        "histogram": np.bincount(bins, minlength=len(edges) - 1).tolist(),
        "entropy": None,
        "max_probability": None,
    }
    if kind.probability:
        dim = params["dim"] % y.dim()
        p = y.double().numpy()
        p = np.exp(p) if kind.range_for(params)[1] == 0.0 else p
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = -np.where(p == 0, 0.0, p * np.log(p)).sum(axis=dim)
        keep = np.isfinite(entropy)
        out["entropy"] = entropy[keep].mean()
        out["max_probability"] = p.max(axis=dim)[keep].mean()
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_statistics_match_numpy_reference(name: str, backend: str) -> None:
    kind = ACTIVATIONS[name]
    model = compile_spec(activation_spec(kind, (4, 9)), device="cpu", seed=0).eval()
    x = awkward_input(200, (4, 9))
    with torch.no_grad():
        y = model(x)
    monitor = run_monitor(model, [x], backend=backend)
    (stats,) = monitor.stats()
    expected = reference(kind, model.spec.nodes[0].layer.params(), x, y, stats.histogram.edges)
    got = stats.model_dump()
    got["histogram"] = stats.histogram.counts
    for key in ("mean", "std", "entropy", "max_probability"):
        assert (got.pop(key) is None) == (expected[key] is None), key
        if expected[key] is not None:
            assert getattr(stats, key) == pytest.approx(expected[key], rel=REL), key
        expected.pop(key)
    assert {key: got[key] for key in expected} == expected
    assert sum(stats.histogram.counts) == stats.count - stats.nan_count - stats.inf_count
    assert stats.grad_norm is None
    lo, hi = kind.range_for(model.spec.nodes[0].layer.params())
    assert stats.histogram.scale == ("linear" if math.isfinite(lo) and math.isfinite(hi) else "symlog")
    assert (stats.histogram.edges[0], stats.histogram.edges[-1]) == (float(np.float32(max(lo, -1e4))), float(np.float32(min(hi, 1e4))))


def flat_bound_kinds() -> list[ActivationKind]:
    return [kind for kind in ACTIVATIONS.values() if kind.flat is not None and kind.flat.bounds is not None]


def parameter_sets(kind: ActivationKind) -> list[dict[str, Any]]:
    """Default and example parameters (those a spec accepts)."""
    sets = []
    for params in ({}, dict(kind.example)):
        try:
            parse_spec(activation_spec(kind, (3,), params))
        except ValueError:
            continue
        sets.append(params)
    return sets


@pytest.mark.parametrize("kind", flat_bound_kinds(), ids=lambda kind: kind.name)
def test_flat_interval_is_the_registry_where(kind: ActivationKind) -> None:
    """The kernel's interval form of the flat region picks exactly the elements ``where`` picks,
    at and around every bound (to the last float32 ulp), at +-inf and NaN."""
    for params in parameter_sets(kind):
        node = parse_spec(activation_spec(kind, (1,), params)).nodes[0]
        bounds = kind.flat.bounds_for(node.layer.params())
        assert bounds is not None
        around = []
        for bound in (bounds.lo, bounds.hi):
            if math.isfinite(bound):
                value = np.float32(bound)
                for _ in range(3):
                    value = np.nextafter(value, np.float32(-math.inf))
                around += [value] + [value := np.nextafter(value, np.float32(math.inf)) for _ in range(6)]
        special = [0.0, -0.0, 1e-45, -1e-45, math.inf, -math.inf, math.nan]
        x = torch.tensor(np.concatenate([np.asarray(around, np.float32), np.asarray(special, np.float32),
                                         np.random.default_rng(0).normal(0, 10, 200).astype(np.float32)]))
        model = compile_spec(activation_spec(kind, (1,), params), device="cpu").eval()
        with torch.no_grad():
            y = model(x[:, None])[:, 0]
        probe = Probe.of(node, 8)
        assert probe.flat is not None and probe.flat.mode != native.FLAT_MASK
        expected = kind.flat.where(x, y, node.layer.params()).expand_as(y)
        assert torch.equal(probe.flat.mask(x, y), expected), params


LAYOUTS = [(13,), (1030,), (3, 37), (2, 1100), (16, 2, 5)]
"""Per-feature units (odd, and wider than a kernel chunk); odd rows; rows longer than a chunk; rank 3."""


@NEEDS_COMPILER
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_native_kernel_equals_torch_path(name: str) -> None:
    kind = ACTIVATIONS[name]
    for shape in LAYOUTS:
        spec = activation_spec(kind, shape)
        try:
            parse_spec(spec)
        except ValueError:
            continue  # e.g. glu cannot halve an odd dim
        batches = [awkward_input(17, shape, seed) for seed in range(3)]
        states = []
        for backend in ("native", "torch"):
            model = compile_spec(spec, device="cpu", seed=0).eval()
            states.append(run_monitor(model, batches, backend=backend).state()[0])
        assert_states_equal(*states)


def elementwise_spec() -> dict[str, Any]:
    """Layers whose outputs do not depend on the batch size, bit for bit."""
    return {
        "input_shape": [8, 5, 5],
        "layers": [
            {"type": "leaky_relu", "negative_slope": 0.005},
            {"type": "sigmoid"},
            {"type": "flatten"},
            {"type": "softmax", "dim": 1},
        ],
    }


def elementwise_input(n: int) -> torch.Tensor:
    x = awkward_input(n, (8, 5, 5), scale=3.0)
    x[:, 7] = -x[:, 7].abs() - 0.1  # channel 7 never leaves leaky_relu's flat region: a dead unit
    return x


@pytest.mark.parametrize("backend", BACKENDS)
def test_four_batches_equal_one(backend: str) -> None:
    x = elementwise_input(1024)
    whole = run_monitor(compile_spec(elementwise_spec(), device="cpu"), [x], layers="all", backend=backend)
    parts = run_monitor(compile_spec(elementwise_spec(), device="cpu"), list(x.split(256)), layers="all", backend=backend)
    for a, b in zip(parts.state(), whole.state()):
        assert_states_equal(a, b)
    stats = whole.stats()
    assert stats[0].dead_fraction == 1 / 8
    for a, b in zip(parts.stats(), stats):
        assert_stats_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_merged_states_equal_one_pass(backend: str) -> None:
    x = elementwise_input(600)
    first = run_monitor(compile_spec(elementwise_spec(), device="cpu"), [x[:100], x[100:250]], layers="all", backend=backend)
    second = run_monitor(compile_spec(elementwise_spec(), device="cpu"), [x[250:]], layers="all", backend=backend)
    whole = run_monitor(compile_spec(elementwise_spec(), device="cpu"), [x], layers="all", backend=backend)
    merged = [merge_states(a, b) for a, b in zip(first.state(), second.state())]
    for a, b in zip(merged, whole.state()):
        assert_states_equal(a, b)
        empty = LayerState.empty(a.bins, a.alive.numel())
        assert_states_equal(merge_states(empty, a), a)
        assert_states_equal(merge_states(a, empty), a)
    first.load_state(merged)
    for a, b in zip(first.stats(), whole.stats()):
        assert_stats_equal(a, b)
    with pytest.raises(ValueError, match="does not fit layer leaky_relu_0"):
        first.load_state([LayerState.empty(8, 3)] * len(merged))
    with pytest.raises(ValueError, match="one per monitored layer"):
        first.load_state(merged[:1])


def test_merge_refuses_states_of_different_layers() -> None:
    with pytest.raises(ValueError, match="different layers"):
        merge_states(LayerState.empty(64, 3), LayerState.empty(32, 3))


MIXED = {
    "input_shape": [1, 12, 12],
    "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "activation": "relu"},
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "activation": {"type": "hardtanh", "min_val": -0.5, "max_val": 0.5}},
        {"type": "flatten"},
        {"type": "linear", "out_features": 16, "activation": "tanh"},
        {"type": "linear", "out_features": 5, "activation": "log_softmax"},
    ],
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_both_styles_give_the_same_statistics(backend: str) -> None:
    x = torch.randn(32, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    results = []
    for style in STYLES:
        model = compile_spec(MIXED, style=style, device="cpu", seed=3)
        with ActivationMonitor(model, layers="all", backend=backend) as monitor:
            for _ in range(2):
                model(x).sum().backward()
        results.append(monitor.stats())
    assert [s.name for s in results[0]] == [node.name for node in model.spec.nodes]
    assert all(s.grad_norm is not None for s in results[0])
    for a, b in zip(*results):
        assert_stats_equal(a, b)


@pytest.mark.parametrize("style", STYLES)
def test_dead_relu_and_living_leaky_relu(style: str) -> None:
    """fc1's bias at -100 drives every pre-activation far below 0."""
    for activation, dead, zeros in (("relu", 1.0, 1.0), ("leaky_relu", 0.0, 0.0)):
        spec = {"input_shape": [20], "layers": [{"type": "linear", "out_features": 32, "name": "fc1", "activation": activation}]}
        model = compile_spec(spec, style=style, device="cpu", seed=0)
        with torch.no_grad():
            model.fc1.bias.fill_(-100.0)
        (stats,) = run_monitor(model, [torch.randn(64, 20)]).stats()
        assert (stats.dead_fraction, stats.zero_fraction) == (dead, zeros)


def test_sigmoid_saturates_with_large_weights() -> None:
    """Default init (weights ~ U(+-1/sqrt(fan_in))) gives pre-activations of std ~0.58 * input std.
    Inputs of std 4 put them at std ~2.3: |x| > 6 is rare. With weights x50, std ~115: |x| < 6
    only within 0.05 std of 0, about 4% of the time, so over 90% is saturated."""
    spec = {"input_shape": [64], "layers": [{"type": "linear", "out_features": 64, "name": "fc", "activation": "sigmoid"}]}
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(0)) * 4
    model = compile_spec(spec, device="cpu", seed=0)
    (default,) = run_monitor(model, [x]).stats()
    with torch.no_grad():
        model.fc.weight.mul_(50)
    (large,) = run_monitor(model, [x]).stats()
    assert default.saturated_fraction < 0.05
    assert large.saturated_fraction > 0.9


@pytest.mark.parametrize("style", STYLES)
def test_grad_norm_is_the_mean_over_backward_passes(style: str) -> None:
    spec = {"input_shape": [6], "layers": [{"type": "linear", "out_features": 5, "activation": "tanh"}]}
    model = compile_spec(spec, style=style, device="cpu", seed=0)
    norms = []
    with ActivationMonitor(model) as monitor:
        for scale in (1.0, 3.0):
            x = torch.randn(8, 6, requires_grad=True)
            y = model(x)
            (torch.tanh(y) * scale).square().sum().backward()
            t = torch.tanh(y.detach())
            norms.append(float(torch.linalg.vector_norm(2 * scale**2 * t * (1 - t**2))))
        (stats,) = monitor.stats()
    assert stats.grad_norm == pytest.approx(sum(norms) / 2, rel=1e-5)


def test_disabled_passes_are_not_counted_and_reset_starts_a_window() -> None:
    spec = {"input_shape": [6], "layers": [{"type": "relu"}]}
    model = compile_spec(spec, device="cpu")
    with ActivationMonitor(model) as monitor:
        model(torch.randn(4, 6))
        monitor.enabled = False
        model(torch.randn(40, 6))
        monitor.enabled = True
        assert monitor.stats()[0].count == 24
        monitor.reset()
        (stats,) = monitor.stats()
        assert (stats.count, stats.mean, stats.min, sum(stats.histogram.counts)) == (0, None, None, 0)
        model(torch.randn(2, 6))
    model(torch.randn(3, 6))  # hooks are off after the block
    assert monitor.stats()[0].count == 12


def mixed_batches() -> list[torch.Tensor]:
    """Three batches of different sizes for ``MIXED``, NaN and inf in the second."""
    return [torch.randn(5, 1, 12, 12, generator=torch.Generator().manual_seed(7)),
            awkward_input(9, (1, 12, 12), seed=8),
            torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(9)) * 40]


def one_batch(model: torch.nn.Module, batch: torch.Tensor, backend: str) -> list[dict[str, Any]]:
    """A monitor attached for one forward and backward pass over ``batch``, then read and dropped."""
    with ActivationMonitor(model, layers="all", backend=backend) as monitor:
        model(batch).sum().backward()
    return [stats.model_dump() for stats in monitor.stats()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_monitor_per_batch_reports_exactly_what_a_monitor_of_a_fresh_model_does(backend: str) -> None:
    """Monitors made one after another on a model take over the accumulators of the ones before
    (emptied): each batch's statistics are those of a monitor on a model that never had one."""
    model = compile_spec(MIXED, device="cpu", seed=3)
    for batch in mixed_batches():  # assert_equal: exactly, NaN (the gradient's norm, after NaN inputs) equal to NaN
        np.testing.assert_equal(one_batch(model, batch, backend), one_batch(compile_spec(MIXED, device="cpu", seed=3), batch, backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_reset_leaves_nothing_of_the_previous_batches(backend: str) -> None:
    model = compile_spec(MIXED, device="cpu", seed=3)
    with ActivationMonitor(model, layers="all", backend=backend) as monitor:
        for batch in mixed_batches():
            monitor.reset()
            assert all(torch.equal(a.counts, b.counts) and torch.equal(a.moments, b.moments) and torch.equal(a.alive, b.alive)
                       for a, b in zip(monitor.state(), (LayerState.empty(p.scheme.bins, p.units) for p in monitor.probes)))
            model(batch).sum().backward()
            np.testing.assert_equal([s.model_dump() for s in monitor.stats()], one_batch(compile_spec(MIXED, device="cpu", seed=3), batch, backend))


def test_monitors_alive_at_once_keep_windows_of_their_own() -> None:
    """A monitor still held keeps its accumulators: one made beside it, or after another is
    dropped, never takes them over."""
    model = compile_spec(MIXED, device="cpu", seed=3)
    first, second = mixed_batches()[:2]
    held = ActivationMonitor(model)
    model(first)
    held.enabled = False
    expected = [s.model_dump() for s in held.stats()]
    for _ in range(2):
        with ActivationMonitor(model) as other:
            model(second)
        assert other.stats()[0].count == second.shape[0] * 4 * 10 * 10
        del other
        assert [s.model_dump() for s in held.stats()] == expected
    held.close()


def test_a_backward_pass_counts_for_the_monitor_of_its_forward_only() -> None:
    model = compile_spec(MIXED, device="cpu", seed=3)
    with ActivationMonitor(model) as first:
        out = model(mixed_batches()[0])
    del first  # the graph still holds it: its accumulators stay its own
    with ActivationMonitor(model) as second:
        pass
    out.sum().backward()
    assert all(stats.grad_norm is None for stats in second.stats())


def test_inference_mode_then_training_passes() -> None:
    """States made during inference_mode stay normal tensors, updatable outside it."""
    for backend in ("native", "torch") if native.compiler() else ("torch",):
        model = compile_spec({"input_shape": [6], "layers": [{"type": "linear", "out_features": 4, "activation": "elu"}]}, device="cpu")
        with ActivationMonitor(model, layers="all", backend=backend) as monitor:
            with torch.inference_mode():
                model(torch.randn(5, 6))
            model(torch.randn(5, 6)).sum().backward()
        assert [s.count for s in monitor.stats()] == [40, 40]


def test_float64_model_uses_the_torch_path() -> None:
    kind = ACTIVATIONS["tanh"]
    x = awkward_input(50, (3, 4)).double()
    states = [run_monitor(compile_spec(activation_spec(kind, (3, 4)), device="cpu", dtype=dtype), [x.to(dtype)]).state()[0]
              for dtype in (torch.float64, torch.float32)]
    assert torch.equal(states[0].counts[:HISTOGRAM], states[1].counts[:HISTOGRAM])
    assert states[0].histogram.sum() == states[0].finite_count


def test_without_the_kernel_the_torch_path_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    x = awkward_input(40, (3, 5))
    expected = run_monitor(compile_spec(elementwise_spec() | {"input_shape": [3, 5]}, device="cpu"), [x], backend="torch").stats()
    monkeypatch.setattr(native, "kernel", lambda: None)
    model = compile_spec(elementwise_spec() | {"input_shape": [3, 5]}, device="cpu")
    for a, b in zip(run_monitor(model, [x]).stats(), expected):
        assert_stats_equal(a, b)
    with pytest.raises(RuntimeError, match="native statistics kernel is unavailable"):
        run_monitor(model, [x], backend="native")


@NEEDS_COMPILER
def test_kernel_builds_where_there_is_a_compiler() -> None:
    """Built on first use into the virtual environment (from nothing in a fresh one); a failed
    build would fall back to torch silently, so it is checked here."""
    assert native.kernel() is not None, native.build_error()
    assert native.build_error() is None


@pytest.mark.parametrize("output_range", [(0.0, 1.0), (-1.0, 1.0), (0.0, 6.0), (0.0, math.inf), (-1.7581, math.inf),
                                          (-math.inf, 0.0), (-math.inf, math.inf)])
def test_histogram_edges_are_exact(output_range: tuple[float, float]) -> None:
    scheme = BinScheme.for_range(output_range, 64)
    edges = torch.tensor(scheme.edges(), dtype=torch.float32)
    inner = edges[1:-1]
    assert torch.all(edges[1:] > edges[:-1])
    assert torch.equal(scheme.index(inner), torch.arange(1, 64))
    assert torch.equal(scheme.index(torch.nextafter(inner, torch.tensor(-math.inf))), torch.arange(0, 63))
    assert scheme.index(torch.tensor([-3e38, 3e38])).tolist() == [0, 63]  # folded into the end bins


def test_stats_are_json() -> None:
    model = compile_spec(MIXED, device="cpu")
    monitor = run_monitor(model, [torch.randn(4, 1, 12, 12)], layers="all")
    for stats in monitor.stats() + ActivationMonitor(model, layers=["relu_1"]).stats():
        assert LayerStats.model_validate_json(stats.model_dump_json()) == stats


def test_layer_selection_and_errors() -> None:
    model = compile_spec(MIXED, device="cpu")
    assert [p.name for p in ActivationMonitor(model).probes] == ["relu_1", "hardtanh_3", "tanh_6", "log_softmax_8"]
    assert [p.name for p in ActivationMonitor(model, layers=["tanh_6", "conv2d_0"]).probes] == ["conv2d_0", "tanh_6"]
    with pytest.raises(ValueError, match="no layer named 'tahn_6'; did you mean 'tanh_6'"):
        ActivationMonitor(model, layers=["tahn_6"])
    with pytest.raises(ValueError, match="bins must be"):
        ActivationMonitor(model, bins=1)
    with pytest.raises(TypeError, match="compile_spec"):
        ActivationMonitor(torch.nn.Sequential(torch.nn.ReLU()))


def test_an_overflowed_scaled_gradient_is_left_out_of_the_norm_and_a_real_inf_is_not() -> None:
    """Under fp16's loss scale an overflow is a step the scaler skips, not a gradient; without a scale an inf is real."""
    scaled = LayerState.empty(bins=8, units=3)
    add_gradient(scaled, torch.tensor([3.0, 4.0]) * 1024, torch.tensor(1024.0))
    add_gradient(scaled, torch.tensor([math.inf, 1.0]), torch.tensor(1024.0))
    assert scaled.counts[GRAD_PASSES] == 1 and scaled.moments[GRAD_NORM_SUM] == 5.0
    plain = LayerState.empty(bins=8, units=3)
    add_gradient(plain, torch.tensor([math.inf, 1.0]))
    assert plain.counts[GRAD_PASSES] == 1 and math.isinf(plain.moments[GRAD_NORM_SUM])
