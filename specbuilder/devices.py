"""Devices, dtypes and mixed precision as users name them, resolved with clear errors; moving data onto a device.

``to_device`` is the one host-to-device copy every path uses (pinned memory, non-blocking, for
CUDA); ``DeviceTimer`` times device work without making the host wait for it.
"""

from __future__ import annotations

import re
import time
from contextlib import AbstractContextManager, nullcontext

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` are checked."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not match:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available here; use 'auto' or 'cpu'")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device("cuda", index)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """A floating dtype by name (``"float32"``) or object; None means float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be a floating type ({', '.join(DTYPES)}), got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Mixed-precision names (``TrainConfig.amp``, the ``amp`` evaluate option) -> the dtype autocast computes in."""


def amp_dtype(amp: str | None) -> torch.dtype | None:
    """The autocast dtype of ``amp`` (``"bf16"``, ``"fp16"``), or None for ``None`` (full precision)."""
    if amp is None:
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be 'bf16', 'fp16' or None (off), got {amp!r}")
    return AMP_DTYPES[amp]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """Mixed precision on ``device`` in ``dtype`` (``torch.autocast``); nothing when ``dtype`` is None.

    Under it, matmuls and convolutions compute in ``dtype`` while reductions and losses stay in
    float32 (torch's autocast op lists); parameters and gradients keep their own dtype.
    """
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` on ``device`` in ``dtype`` (None: its own), copied only where it has to be.

    A CPU tensor bound for CUDA is staged in pinned memory and copied with ``non_blocking``: the
    host goes on while the copy runs, and work queued after it on the stream sees the data (the
    pinned block is not reused before the copy is done: torch's host allocator records it). A
    narrowing conversion happens on the host, so fewer bytes cross the bus; a widening one on the
    device. Anywhere else this is ``tensor.to(device, dtype)``, which copies nothing when nothing changes.
    """
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device=device, dtype=dtype)
    if dtype is not None and dtype.itemsize < tensor.dtype.itemsize:
        tensor = tensor.to(dtype=dtype)
    return tensor.pin_memory().to(device=device, non_blocking=True).to(dtype=dtype)


class DeviceTimer:
    """Time spent computing on ``device``, summed over spans, read with at most one host sync.

    On the CPU a span is wall time. On CUDA it is a pair of timing events recorded around the
    work on the device's current stream, so timing never makes the host wait for the device:
    ``seconds`` waits once, for the last span (spans already finished are folded in as they end).
    """

    def __init__(self, device: torch.device) -> None:
        self._stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        self._seconds = 0.0
        self._spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def start(self) -> object:
        """Begin a span; hand the token to ``stop``."""
        if self._stream is None:
            return time.perf_counter()
        while self._spans and self._spans[0][1].query():  # finished spans: keep the list short
            begin, end = self._spans.pop(0)
            self._seconds += begin.elapsed_time(end) / 1000
        event = torch.cuda.Event(enable_timing=True)
        event.record(self._stream)
        return event

    def stop(self, token: object) -> None:
        """End the span ``start`` began."""
        if isinstance(token, float):
            self._seconds += time.perf_counter() - token
            return
        assert isinstance(token, torch.cuda.Event) and self._stream is not None
        end = torch.cuda.Event(enable_timing=True)
        end.record(self._stream)
        self._spans.append((token, end))

    def add(self, seconds: float) -> None:
        """Count host time spent for the device's work (reading results back, say)."""
        self._seconds += seconds

    @property
    def seconds(self) -> float:
        """Every span so far, in seconds (on CUDA this waits for the last one to finish)."""
        if self._spans:
            self._spans[-1][1].synchronize()
            self._seconds += sum(begin.elapsed_time(end) for begin, end in self._spans) / 1000
            self._spans.clear()
        return self._seconds
