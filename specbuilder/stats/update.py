"""Adding one batch to a layer's state: the native kernel, or the same numbers in torch ops.

``native_update`` makes one call into ``_kernel.cpp`` (float32 on CPU). ``torch_update`` runs
anywhere (CUDA, other dtypes, no compiler): it builds the batch's own ``LayerState`` with torch
reductions and merges it in, all on the device, never reading a value back to the host.
Softmax-like layers add their row entropy and max probability with torch ops on both paths.
"""

from __future__ import annotations

import ctypes
import math

import torch

from specbuilder.stats import native
from specbuilder.stats.probe import Probe
from specbuilder.stats.state import (
    ENTROPY_SUM, GRAD_NORM_SUM, GRAD_PASSES, M2, MAX, MAX_PROBABILITY_SUM, MEAN, MIN, ROWS, LayerState, merge_states,
)


def _units_view(probe: Probe, t: torch.Tensor) -> torch.Tensor:
    """``[N, C, S]``: units along dim 1."""
    return t.reshape(t.shape[0], probe.units, -1)


def torch_update(probe: Probe, state: LayerState, x: torch.Tensor, y: torch.Tensor) -> None:
    """Add batch ``y`` (the layer's output for input ``x``) to ``state`` with torch ops."""
    state.copy_(merge_states(state, batch_state(probe, x, y)))


def batch_state(probe: Probe, x: torch.Tensor, y: torch.Tensor) -> LayerState:
    """The state of this batch alone (element statistics; probability rows are added apart)."""
    y = y.detach()
    device, bins = y.device, probe.scheme.bins
    finite = torch.isfinite(y)
    finite_count = finite.sum()
    nan_count = torch.isnan(y).sum()
    clean = torch.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
    mean = clean.sum(dtype=torch.float64) / finite_count.clamp(min=1)
    deviation = clean.double().sub_(mean)  # non-finite places hold 0 - mean: taken out below
    m2 = deviation.square_().sum() - (y.numel() - finite_count) * mean * mean
    bin_index = torch.where(finite, probe.scheme.index(y), bins).flatten()
    if device.type == "cpu":
        histogram = torch.bincount(bin_index, minlength=bins + 1)
    else:  # bincount reads its input's max back to the host; scatter_add does not
        histogram = torch.zeros(bins + 1, dtype=torch.int64, device=device)
        histogram.scatter_add_(0, bin_index, torch.ones(1, dtype=torch.int64, device=device).expand_as(bin_index))
    alive = torch.zeros(probe.units, dtype=torch.bool, device=device)
    flat_count = torch.zeros((), dtype=torch.int64, device=device)
    if probe.flat is not None:
        flat = probe.flat_mask(x.detach(), y)
        flat_count = flat.sum()
        alive = (~_units_view(probe, flat)).any(dim=2).any(dim=0)
    none = torch.zeros((), dtype=torch.int64, device=device)
    counts = torch.stack([
        torch.full((), y.numel(), dtype=torch.int64, device=device), nan_count, y.numel() - finite_count - nan_count,
        (y == 0).sum(), flat_count, none, none,
    ])
    moments = torch.zeros(7, dtype=torch.float64, device=device)
    moments[MEAN], moments[M2] = mean, m2.clamp(min=0)
    moments[MIN] = torch.where(finite, y, math.inf).min().double()
    moments[MAX] = torch.where(finite, y, -math.inf).max().double()
    return LayerState(torch.cat([counts, histogram[:bins]]), moments, alive)


def native_update(probe: Probe, config: native.Config, x: torch.Tensor, y: torch.Tensor) -> None:
    """Add float32 CPU batch ``y`` to the state ``config`` points at, in one kernel call."""
    function = native.kernel()
    assert function is not None
    y = y.detach().contiguous()
    source = 0
    if probe.flat is not None and not probe.flat.of_output:
        flat_input = probe.flat_mask(x.detach(), y) if probe.flat.mode == native.FLAT_MASK else x.detach().float()
        flat_input = flat_input.contiguous()
        source = flat_input.data_ptr()
    n, units = y.shape[0], probe.units
    function(ctypes.byref(config), y.data_ptr(), source, n, units, y.numel() // (n * units), torch.get_num_threads())


def native_config(probe: Probe, state: LayerState) -> native.Config:
    """The kernel's view of ``state`` (CPU tensors whose memory stays put) and of ``probe``."""
    flat = probe.flat
    return native.Config(
        flat=flat.mode if flat else native.FLAT_NONE,
        flat_on_y=int(bool(flat and flat.of_output)),
        flat_lo=flat.lo if flat else 0.0,
        flat_hi=flat.hi if flat else 0.0,
        log_bins=int(probe.scheme.log),
        bins=probe.scheme.bins,
        origin=probe.scheme.origin,
        scale=probe.scheme.scale,
        counts=state.counts.data_ptr(),
        moments=state.moments.data_ptr(),
        alive=state.alive.data_ptr(),
    )


def add_rows(probe: Probe, state: LayerState, y: torch.Tensor) -> None:
    """Softmax-like layers: add each row's entropy and max probability (rows with finite entropy)."""
    assert probe.probability_dim is not None
    logits = y.detach().double()
    p = logits.exp() if probe.log_probability else logits
    entropy = -torch.special.xlogy(p, p).sum(dim=probe.probability_dim)
    top = p.amax(dim=probe.probability_dim)
    keep = torch.isfinite(entropy)
    state.moments[ENTROPY_SUM] += torch.where(keep, entropy, 0).sum()
    state.moments[MAX_PROBABILITY_SUM] += torch.where(keep, top, 0).sum()
    state.counts[ROWS] += keep.sum()


def add_gradient(state: LayerState, grad: torch.Tensor, scale: torch.Tensor | float | None = None) -> None:
    """A backward pass reached the layer's output with gradient ``grad`` (times ``scale``, fp16's
    loss scale, when given): add the true gradient's norm, in float64.

    Under a loss scale, a scaled gradient that overflowed is no gradient: the scaler skips that
    step and lowers the scale. Such a pass is left out (decided on the device: no sync), so one
    overflow does not make the report's norm inf; without a scale an inf norm is real and counts.
    """
    norm = torch.linalg.vector_norm(grad.detach(), dtype=torch.float64)
    if scale is None:
        state.moments[GRAD_NORM_SUM] += norm
        state.counts[GRAD_PASSES] += 1
        return
    finite = torch.isfinite(norm)
    state.moments[GRAD_NORM_SUM] += torch.where(finite, norm / scale, 0.0)
    state.counts[GRAD_PASSES] += finite

