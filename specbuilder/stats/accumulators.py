"""``Accumulators``: the ``LayerState`` of every monitored layer as views of one device tensor.

One int64 tensor holds, layer after layer, the ``counts``, the ``moments`` (their float64 bits)
and the ``alive`` flags (one byte per unit, padded to whole int64 words). So a window starts
with one copy on the device (``reset``, from a block of empty states kept beside it) and is
read with one device-to-host copy (``host``; none on the CPU, where the host's view is the
tensor itself). The views stay put for the life of the block, so the native kernel may keep
their addresses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from specbuilder.stats.state import HISTOGRAM, MOMENTS, LayerState

WORD = 8
"""Bytes per element of the block (int64)."""
Readout = tuple[list[int], list[float], int]
"""One layer on the host, in Python numbers: its counts, its moments and how many units are alive."""


class Accumulators:
    """The states of layers with the given ``(bins, units)``, in that order, on ``device``: each
    empty, never an inference tensor (updatable in place inside and outside ``torch.inference_mode``)."""

    def __init__(self, shapes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> None:
        self._spans: list[tuple[int, int, int, int, int]] = []
        """Per layer: where its counts, moments and flags start in the block and where they end, and its units."""
        end = 0
        for bins, units in shapes:
            counts, moments, alive = end, end + HISTOGRAM + bins, end + HISTOGRAM + bins + MOMENTS
            end = alive + -(-units // WORD)
            self._spans.append((counts, moments, alive, end, units))
        with torch.inference_mode(False):
            self._place(torch.empty(end, dtype=torch.int64, device=device))
            for state in self.states:
                state.clear()
            self._empty = self.block.clone()

    def _place(self, block: torch.Tensor) -> None:
        self.block = block
        self.states = [
            LayerState(block[counts:moments], block[moments:alive].view(torch.float64),
                       block[alive:end].view(torch.uint8)[:units].view(torch.bool))
            for counts, moments, alive, end, units in self._spans
        ]

    @property
    def device(self) -> torch.device:
        return self.block.device

    def reset(self) -> None:
        """Every state back to empty, in place (one copy on the device)."""
        self.block.copy_(self._empty)

    def to(self, device: torch.device | str) -> None:
        """Move the block, and what it holds, to ``device``: ``states`` are then new views."""
        with torch.inference_mode(False):
            self._empty = self._empty.to(device)
            self._place(self.block.to(device))

    def host(self) -> list[Readout]:
        """Every layer's values on the host, in order, from one copy of the block (none on the CPU)."""
        flat = self.block.cpu().numpy()
        flags = flat.view(np.uint8)
        return [
            (flat[counts:moments].tolist(), flat[moments:alive].view(np.float64).tolist(),
             int(np.count_nonzero(flags[alive * WORD:alive * WORD + units])))
            for counts, moments, alive, _, units in self._spans
        ]
