"""Torch pieces torch lacks: a binary step whose backward never raises.

``torch.heaviside`` has no derivative (backward raises). The true derivative of a step is zero
almost everywhere, so by default that is what flows back, and activation statistics show the
whole layer as flat. ``surrogate="ste"`` passes the gradient straight through instead, which
is how binary networks are trained. The code generator copies this file's classes verbatim
into generated source, so it imports only torch.
"""

from __future__ import annotations

import torch
from torch import nn


class StepFunction(torch.autograd.Function):
    """1 where x >= threshold else 0; backward gives zero, or the incoming gradient with 'ste'."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, threshold: float, surrogate: str) -> torch.Tensor:  # noqa: ANN001
        ctx.straight_through = surrogate == "ste"
        return (x >= threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: ANN001
        return (grad if ctx.straight_through else torch.zeros_like(grad)), None, None


def step(x: torch.Tensor, threshold: float = 0.0, surrogate: str = "none") -> torch.Tensor:
    """Binary step: ``1 if x >= threshold else 0``, with a zero or straight-through gradient."""
    return StepFunction.apply(x, threshold, surrogate)


class Step(nn.Module):
    """Binary step activation (Heaviside) as a module; see ``step``."""

    def __init__(self, threshold: float = 0.0, surrogate: str = "none") -> None:
        super().__init__()
        self.threshold = threshold
        self.surrogate = surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return step(x, self.threshold, self.surrogate)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, surrogate={self.surrogate!r}"
