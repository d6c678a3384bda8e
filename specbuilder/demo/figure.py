"""The demo's picture: one grouped bar chart of the rows, and each row's gradient over training.

Left, per activation: validation accuracy, dead hidden units and saturated hidden outputs (%).
Right: the gradient norm reaching the first hidden layer at every statistics window, on a
symlog axis so that step's exact zero shows as a line at 0 next to the others' decades.
Drawn like ``specbuilder.plots``: a pyplot-free ``Figure`` on the Agg canvas.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from specbuilder.demo.experiment import Row

SIZE = (12.0, 4.2)
DPI = 110
BARS = (("accuracy", "tab:green"), ("dead units", "tab:red"), ("saturated outputs", "tab:orange"))
GRAD_FLOOR = 1e-3
"""Below this the gradient axis is linear (symlog's ``linthresh``), so zero can be drawn."""


def _values(row: Row) -> tuple[float, float, float]:
    return 100 * (row.accuracy or 0.0), 100 * row.dead, 100 * row.saturated


def comparison(rows: Sequence[Row], title: str) -> Figure:
    """The bar chart (left) and the gradient curves (right) of ``rows``."""
    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    bars, grads = figure.subplots(1, 2, width_ratios=[1.35, 1])
    positions = np.arange(len(rows))
    width = 0.8 / len(BARS)
    for offset, (what, color) in enumerate(BARS):
        heights = [_values(row)[offset] for row in rows]
        bars.bar(positions + (offset - 1) * width, heights, width, label=what, color=color)
    bars.set_xticks(positions, [row.label for row in rows], rotation=30, ha="right", fontsize=8)
    bars.set_ylim(0, 105)
    bars.set_ylabel("%")
    bars.grid(axis="y", alpha=0.3)
    bars.legend(fontsize=8, loc="upper left", ncols=3)
    bars.set_title("after training (validation set, both hidden layers)", fontsize=9)
    for row in rows:
        if row.grad_curve:
            steps, norms = zip(*row.grad_curve)
            grads.plot(steps, norms, label=row.label, linewidth=1.2)
    grads.set_yscale("symlog", linthresh=GRAD_FLOOR)
    grads.set_xlabel("training step", fontsize=8)
    grads.set_ylabel("||dL/dy||", fontsize=8)
    grads.grid(alpha=0.3)
    grads.legend(fontsize=7, ncols=2, loc="center right")
    grads.set_title("gradient reaching the first hidden layer", fontsize=9)
    figure.suptitle(title, fontsize=10)
    return figure


__all__ = ["comparison"]
