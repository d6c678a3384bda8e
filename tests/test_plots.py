"""``specbuilder.plots``: histograms, fractions over training, the activation atlas, PNG output.

The atlas is checked against the registry (one panel per activation), its derivatives against
finite differences of its curves, and its shading against the derivative (flat means below 1%
of the peak). Statistics come from a real monitored model, in the core's and the client's form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from specbuilder import plots
from specbuilder.activations import ACTIVATIONS
from specbuilder.compiler import compile_spec
from specbuilder.stats import ActivationMonitor, LayerStats

SPEC = {
    "name": "three-kinds",
    "input_shape": [4],
    "layers": [
        {"type": "linear", "out_features": 8, "activation": "relu"},
        {"type": "linear", "out_features": 8, "activation": "sigmoid"},
        {"type": "linear", "out_features": 3, "activation": {"type": "softmax", "dim": 1}},
    ],
}


@pytest.fixture(scope="module")
def stats() -> list[LayerStats]:
    model = compile_spec(SPEC, device="cpu", seed=0).eval()
    with ActivationMonitor(model) as monitor, torch.inference_mode():
        model(torch.randn(256, 4, generator=torch.Generator().manual_seed(0)) * 3)
        return monitor.stats()


def visible_axes(figure: Figure) -> list[Axes]:
    return [ax for ax in figure.get_axes() if ax.get_visible()]


def test_histograms_one_panel_per_layer_with_its_fractions(stats: list[LayerStats]) -> None:
    figure = plots.histograms(stats)
    axes = visible_axes(figure)
    assert [ax.get_title() for ax in axes] == ["relu_1 (relu)", "sigmoid_3 (sigmoid)", "softmax_5 (softmax)"]
    for ax, layer in zip(axes, stats):
        (patch,) = ax.patches  # the filled stairs
        assert f"dead {100 * layer.dead_fraction:.1f}%" in ax.texts[0].get_text()
        assert f"saturated {100 * layer.saturated_fraction:.1f}%" in ax.texts[0].get_text()
    relu, sigmoid = axes[0], axes[1]
    assert relu.get_xscale() == "symlog"  # unbounded: log-spaced bins
    assert sigmoid.get_xscale() == "linear"  # bounded: uniform bins
    low, high = sigmoid.get_xlim()
    assert 0 <= low < high <= 1


def test_statistics_that_crossed_the_wire_plot_alike(stats: list[LayerStats]) -> None:
    remote = [LayerStats.from_proto(layer.to_proto()) for layer in stats]
    figure = plots.histograms(remote)
    assert [ax.get_title() for ax in visible_axes(figure)] == [ax.get_title() for ax in visible_axes(plots.histograms(stats))]


def test_fractions_plot_every_layer_over_the_windows(stats: list[LayerStats]) -> None:
    windows = [(10, stats), (20, stats[:2])]
    figure = plots.fractions(windows)
    dead, saturated = visible_axes(figure)
    assert [line.get_label() for line in saturated.lines] == ["relu_1", "sigmoid_3", "softmax_5"]
    relu_dead, _, softmax_dead = dead.lines
    assert list(relu_dead.get_xdata()) == [10, 20]
    assert list(relu_dead.get_ydata()) == pytest.approx([100 * stats[0].dead_fraction] * 2)
    assert list(softmax_dead.get_xdata()) == [10]
    assert list(saturated.lines[1].get_ydata()) == pytest.approx([100 * stats[1].saturated_fraction] * 2)


def test_fractions_without_windows_say_how_to_get_them() -> None:
    figure = plots.fractions([])
    assert all("--stats-every" in ax.texts[0].get_text() for ax in visible_axes(figure))


def test_training_figure_holds_both_and_saves_as_png(stats: list[LayerStats], tmp_path: Path) -> None:
    figure = plots.training(stats, [(5, stats), (10, stats)])
    assert len(visible_axes(figure)) == len(stats) + 2
    path = plots.save(figure, tmp_path / "training.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        width, height = image.size
    assert 500 <= width <= 3000 and 400 <= height <= 3000


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_atlas_curve_is_the_activation_with_its_derivative(name: str) -> None:
    kind = ACTIVATIONS[name]
    curve = plots.curve(kind)
    assert curve.x.shape == curve.y.shape == curve.dy.shape == curve.flat.shape == (plots.ATLAS_POINTS,)
    assert np.isfinite(curve.y).all() and np.isfinite(curve.dy).all()
    # autograd's derivative is the slope of the plotted curve (the median ignores kinks and jumps)
    assert np.median(np.abs(curve.dy - np.gradient(curve.y, curve.x))) < 1e-3
    # shaded means flat: the derivative there is under 1% of its peak (the registry's rule)
    peak = np.abs(curve.dy).max()
    assert (np.abs(curve.dy[curve.flat]) <= 0.0101 * peak + 1e-12).all()
    if kind.flat is None:
        assert not curve.flat.any()


def test_atlas_curves_follow_the_registry() -> None:
    relu = plots.curve(ACTIVATIONS["relu"])
    np.testing.assert_array_equal(relu.y, np.maximum(relu.x, 0))
    np.testing.assert_array_equal(relu.dy, (relu.x > 0).astype(float))
    softmax = plots.curve(ACTIVATIONS["softmax"])
    np.testing.assert_allclose(softmax.y, 1 / (1 + np.exp(-softmax.x)), atol=1e-12)
    assert softmax.probe == "softmax([x, 0])[0]"
    assert plots.curve(ACTIVATIONS["glu"]).probe == "glu([x, x])[0]"
    threshold = plots.curve(ACTIVATIONS["threshold"])
    assert threshold.params == {"threshold": 0.1, "value": -1.0}  # required, so the registry's example


def test_atlas_has_one_panel_per_registry_entry() -> None:
    curves = plots.atlas_curves()
    assert [c.name for c in curves] == list(ACTIVATIONS)
    figure = plots.atlas(curves)
    axes = visible_axes(figure)
    assert len(axes) == len(ACTIVATIONS)
    assert [ax.get_title().split("(")[0] for ax in axes] == [c.probe.split("(")[0] for c in curves]
    for ax in axes:
        solid, dashed = ax.lines[-2:]
        assert (solid.get_linestyle(), dashed.get_linestyle()) == ("-", "--")
