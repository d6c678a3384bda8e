"""Activation statistics merged across the ranks of a ``torch.distributed`` process group.

Each rank's ``ActivationMonitor`` sees only its own batches. ``all_merge_states`` gathers every
rank's ``LayerState`` (one all-gather of one packed int64 buffer: counts and histogram bins as
they are, the float64 moments by their bit patterns, the per-unit "ever left the flat region"
flags as 0/1) and merges them with ``merge_states`` in rank order, on every rank. So counts,
histogram bins, NaN/inf/zero/flat counts, extremes, gradient-pass counts and the dead-unit
masks (logical OR of "ever fired") are exactly what one process would hold after seeing the
union of the ranks' batches; mean and variance merge by Chan et al.'s parallel formula, equal
to float64 rounding; sums (gradient norms, row entropy) add. Every rank ends with bitwise the
same result, since all merge the same states in the same order.

Works with any backend: the buffer travels on the CPU for gloo and on the current CUDA device
for NCCL.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import torch
import torch.distributed as dist

from specbuilder.stats.monitor import ActivationMonitor
from specbuilder.stats.state import MOMENTS, LayerState, merge_states


def collective_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """Where tensors for ``group``'s collectives live: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _pack(states: Sequence[LayerState], device: torch.device) -> torch.Tensor:
    """Every state as one int64 vector: counts, moments' bits, alive flags, layer after layer."""
    parts = [torch.zeros(0, dtype=torch.int64, device=device)]
    for state in states:
        parts += [state.counts.to(device), state.moments.to(device).view(torch.int64), state.alive.to(device, torch.int64)]
    return torch.cat(parts)


def _unpack(flat: torch.Tensor, like: Sequence[LayerState]) -> list[LayerState]:
    """``_pack``'s inverse, shaped like ``like`` (on ``flat``'s device)."""
    states, offset = [], 0
    for state in like:
        n_counts, n_units = state.counts.numel(), state.alive.numel()
        counts = flat[offset:offset + n_counts].clone()
        moments = flat[offset + n_counts:offset + n_counts + MOMENTS].clone().view(torch.float64)
        alive = flat[offset + n_counts + MOMENTS:offset + n_counts + MOMENTS + n_units] != 0
        states.append(LayerState(counts, moments, alive))
        offset += n_counts + MOMENTS + n_units
    return states


def all_merge_states(states: Sequence[LayerState], group: dist.ProcessGroup | None = None) -> list[LayerState]:
    """Every rank's ``states`` (one per monitored layer, the same layers on every rank) merged in
    rank order, returned on every rank (on ``collective_device``): what one process would hold after all the
    ranks' passes. A collective: every rank of ``group`` must call it."""
    world = dist.get_world_size(group)
    packed = _pack(states, collective_device(group))
    sizes = [torch.zeros(1, dtype=torch.int64, device=packed.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([packed.numel()], dtype=torch.int64, device=packed.device), group=group)
    if any(int(size) != packed.numel() for size in sizes):
        raise ValueError(f"ranks monitor different layers: packed statistics of {[int(s) for s in sizes]} values")
    gathered = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(gathered, packed, group=group)
    per_rank = [_unpack(flat, states) for flat in gathered]
    return [reduce(merge_states, layer) for layer in zip(*per_rank, strict=True)]


def all_merge_monitor(monitor: ActivationMonitor, group: dist.ProcessGroup | None = None) -> None:
    """Replace ``monitor``'s window on every rank with the window of all ranks together, so its
    ``stats()`` report the union of the ranks' passes. A collective, like ``all_merge_states``."""
    monitor.load_state(all_merge_states(monitor.state(), group))
