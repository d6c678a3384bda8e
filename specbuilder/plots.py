"""Pictures of what activations do: per-layer histograms, dead and saturated units over training,
and an atlas of every registry activation with its derivative.

Every plotting function takes data and returns a matplotlib ``Figure``; ``save`` writes it as a
PNG. Figures are built without pyplot and drawn by the Agg canvas, so plotting needs no display
and touches no global matplotlib state (safe in a server, a test or a notebook). Statistics are
``LayerStats``, which the client hands out too, so a remote run plots like a local one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, FigureBase

from specbuilder.activations import ACTIVATIONS
from specbuilder.kinds import ActivationKind
from specbuilder_wire.results import LayerStats

PANEL = (2.6, 2.0)
"""Width and height, in inches, of one small panel."""
DPI = 110
ATLAS_RANGE = 10.0
"""The atlas plots every activation on ``[-ATLAS_RANGE, ATLAS_RANGE]``: wide enough to show
where sigmoid (|x| > 6) and softsign (|x| > 9) go flat."""
ATLAS_POINTS = 2001
ATLAS_Y_LIMIT = 4.0
"""Curves are clipped to ``[-ATLAS_Y_LIMIT, ATLAS_Y_LIMIT]`` so unbounded ones leave room for the derivative."""
FLAT_SHADE = "0.88"


Window = tuple[int, Sequence[LayerStats]]
"""One statistics window of a training run: the step it was taken at and its layers."""


def _grid(count: int, columns: int) -> tuple[int, int]:
    """Rows and columns for ``count`` panels, at most ``columns`` wide."""
    cols = max(1, min(count, columns))
    return max(1, math.ceil(count / cols)), cols


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _draw_histogram(ax: Any, layer: LayerStats) -> None:
    """One layer's histogram, cropped to its populated bins; log-spaced bins on a symlog axis."""
    ax.set_title(f"{layer.name} ({layer.kind})", fontsize=9)
    ax.tick_params(labelsize=7)
    histogram = layer.histogram
    counts = np.asarray(histogram.counts, dtype=np.float64)
    if not counts.size or counts.sum() == 0:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    edges = np.asarray(histogram.edges, dtype=np.float64)
    populated = np.flatnonzero(counts)
    first, last = populated[0], populated[-1] + 1
    ax.stairs(counts[first:last], edges[first:last + 1], fill=True, color="tab:blue", alpha=0.8)
    widths = np.diff(edges)
    if not np.allclose(widths, widths[0], rtol=1e-3):
        # Unbounded layers have bins uniform in a log-like transform of y: show them evenly.
        ax.set_xscale("symlog", linthresh=float(np.min(np.abs(widths))) * 4)
    if edges[last] > edges[first]:
        ax.set_xlim(edges[first], edges[last])
    ax.set_yticks([])
    ax.text(
        0.98, 0.95,
        f"dead {_percent(layer.dead_fraction)}\nsaturated {_percent(layer.saturated_fraction)}\nzero {_percent(layer.zero_fraction)}",
        ha="right", va="top", transform=ax.transAxes, fontsize=7,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "linewidth": 0},
    )


def _draw_histograms(target: FigureBase, stats: Sequence[LayerStats], columns: int = 4) -> None:
    rows, cols = _grid(len(stats), columns)
    axes = target.subplots(rows, cols, squeeze=False).ravel()
    for ax, layer in zip(axes, stats):
        _draw_histogram(ax, layer)
    for ax in axes[len(stats):]:
        ax.set_visible(False)
    if not stats:
        axes[0].set_visible(True)
        axes[0].axis("off")
        axes[0].text(0.5, 0.5, "no layers were monitored", ha="center", va="center")
    target.suptitle("activation histograms", fontsize=10)


def _draw_fractions(target: FigureBase, windows: Sequence[Window]) -> None:
    dead, saturated = target.subplots(1, 2, sharex=True)
    names = list(dict.fromkeys(layer.name for _, layers in windows for layer in layers))
    for name in names:
        points = [(step, layer) for step, layers in windows for layer in layers if layer.name == name]
        steps = [step for step, _ in points]
        dead.plot(steps, [100 * layer.dead_fraction for _, layer in points], marker=".", label=name)
        saturated.plot(steps, [100 * layer.saturated_fraction for _, layer in points], marker=".", label=name)
    for ax, what in ((dead, "dead units"), (saturated, "saturated outputs")):
        ax.set_title(f"{what} (%)", fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.set_ylim(-2, 102)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if names:
        saturated.legend(fontsize=7, loc="best")
    else:
        for ax in (dead, saturated):
            ax.text(0.5, 0.5, "no statistics windows\n(set --stats-every N)", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    target.suptitle("dead and saturated over training", fontsize=10)


def histograms(stats: Sequence[LayerStats], columns: int = 4) -> Figure:
    """One panel per layer: its activation histogram, with dead, saturated and zero fractions."""
    rows, cols = _grid(len(stats), columns)
    figure = _new_figure(cols * PANEL[0], rows * PANEL[1] + 0.4)
    _draw_histograms(figure, stats, columns)
    return figure


def fractions(windows: Sequence[Window]) -> Figure:
    """Dead and saturated fractions of every layer across a run's statistics windows."""
    figure = _new_figure(2 * PANEL[0] * 1.6, PANEL[1] * 1.5)
    _draw_fractions(figure, windows)
    return figure


def training(stats: Sequence[LayerStats], windows: Sequence[Window], columns: int = 4) -> Figure:
    """``histograms(stats)`` above ``fractions(windows)``: what ``specbuilder train --plot`` writes."""
    rows, cols = _grid(len(stats), columns)
    hist_height, fraction_height = rows * PANEL[1] + 0.4, PANEL[1] * 1.5
    figure = _new_figure(max(cols * PANEL[0], 2 * PANEL[0] * 1.6), hist_height + fraction_height)
    top, bottom = figure.subfigures(2, 1, height_ratios=[hist_height, fraction_height])
    _draw_histograms(top, stats, columns)
    _draw_fractions(bottom, windows)
    return figure


@dataclass(frozen=True)
class Curve:
    """An activation sampled on a grid: ``y = f(x)``, ``dy = f'(x)`` (autograd) and its flat region."""

    name: str
    params: dict[str, Any]
    x: np.ndarray
    y: np.ndarray
    dy: np.ndarray
    flat: np.ndarray
    """Boolean: where the registry says the activation is flat (its derivative < 1% of its peak)."""
    probe: str
    """How the curve was taken, for the panel's label: ``relu(x)``, ``softmax([x, 0])[0]``, ``glu([x, x])[0]``."""


def atlas_params(kind: ActivationKind) -> dict[str, Any]:
    """The parameters an atlas panel uses: the defaults, and the entry's example for required ones."""
    from specbuilder.spec import ACTIVATION_MODELS

    defaults = ACTIVATION_MODELS[kind.name].defaults()
    return {name: kind.example[name] for name in kind.params if name not in defaults}


def curve(kind: ActivationKind, params: dict[str, Any] | None = None, span: float = ATLAS_RANGE, points: int = ATLAS_POINTS) -> Curve:
    """Sample ``kind`` (compiled by specbuilder, in eval mode, float64) and its derivative on ``[-span, span]``.

    Each sample is a row of two features. Element-wise activations see ``(x, x)``; those that
    act along ``dim`` see it too (glu then gives ``x * sigmoid(x)``), except probability outputs
    (softmax, log_softmax, softmin), which see ``(x, 0)``, a logit against a fixed one, since a
    softmax over equal logits is constant. The curve is the first output feature.
    """
    import torch

    from specbuilder.compiler import compile_spec

    params = atlas_params(kind) if params is None else params
    spec = {"name": f"atlas-{kind.name}", "input_shape": [2], "layers": [{"type": kind.name, **params}]}
    module = compile_spec(spec, "functional", device="cpu", dtype="float64", seed=0).eval()
    x = torch.linspace(-span, span, points, dtype=torch.float64, requires_grad=True)
    inputs = torch.stack([x, torch.zeros_like(x) if kind.probability else x], dim=1)
    outputs = module(inputs)
    (dy,) = torch.autograd.grad(outputs[:, 0].sum(), x, allow_unused=True)
    resolved = {**module.spec.nodes[0].layer.params()}
    with torch.no_grad():
        flat = kind.flat.where(inputs, outputs, resolved)[:, 0] if kind.flat is not None else torch.zeros_like(x, dtype=torch.bool)
    probe = f"{kind.name}([x, {0 if kind.probability else 'x'}])[0]" if "dim" in kind.params else f"{kind.name}(x)"
    return Curve(
        name=kind.name, params=params, x=x.detach().numpy(), y=outputs[:, 0].detach().numpy(),
        dy=np.zeros(points) if dy is None else dy.numpy(), flat=flat.numpy().astype(bool), probe=probe,
    )


def _draw_curve(ax: Any, item: Curve) -> None:
    ax.fill_between(item.x, 0, 1, where=item.flat, transform=ax.get_xaxis_transform(), color=FLAT_SHADE, linewidth=0)
    ax.axhline(0, color="0.6", linewidth=0.5)
    ax.axvline(0, color="0.6", linewidth=0.5)
    ax.plot(item.x, item.y, color="tab:blue", linewidth=1.4)
    ax.plot(item.x, item.dy, color="tab:orange", linewidth=1.1, linestyle="--")
    low = max(-ATLAS_Y_LIMIT, float(min(item.y.min(), item.dy.min())))
    high = min(ATLAS_Y_LIMIT, float(max(item.y.max(), item.dy.max())))
    pad = 0.08 * max(high - low, 1.0)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlim(item.x[0], item.x[-1])
    ax.set_xticks(np.linspace(item.x[0], item.x[-1], 5))
    params = ", ".join(f"{k}={v}" for k, v in item.params.items())
    ax.set_title(item.probe if not params else f"{item.probe}, {params}", fontsize=8)
    ax.tick_params(labelsize=6)


def atlas(curves: Sequence[Curve], columns: int = 6) -> Figure:
    """One small panel per activation: the function (solid), its derivative (dashed), flat regions shaded."""
    rows, cols = _grid(len(curves), columns)
    figure = _new_figure(cols * PANEL[0], rows * PANEL[1] + 0.6)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax, item in zip(axes, curves):
        _draw_curve(ax, item)
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    figure.suptitle("activations f(x) (solid) and f'(x) (dashed, autograd); shaded: flat region, f' < 1% of its peak", fontsize=10)
    return figure


def atlas_curves(kinds: Iterable[ActivationKind] = ACTIVATIONS.values()) -> list[Curve]:
    """``curve(kind)`` for every activation of the registry (or of ``kinds``), in registry order."""
    return [curve(kind) for kind in kinds]


def save(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` to ``path`` as a PNG (parent folders must exist); returns the path."""
    path = Path(path)
    figure.savefig(path, format="png")
    return path


__all__ = [
    "Curve", "Window", "atlas", "atlas_curves", "atlas_params", "curve", "fractions",
    "histograms", "save", "training",
]
