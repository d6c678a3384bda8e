"""Torch's process-wide random generators, shared by threads without mixing their streams.

Dropout and RReLU draw from torch's default generators while training, and take no generator
of their own (``F.dropout`` has no ``generator=``); ``torch.random.fork_rng`` saves and restores
those same process-wide generators. Two runs seeding them and drawing at once, in two threads
(a server training several models), would interleave their draws and undo each other's
seeding: same seed, different models. So specbuilder takes turns at them under ``GLOBAL_RNG``:

- ``compile_spec`` initializes weights holding it (seeded or not, the draws of one build are its own);
- a training run keeps its own stream, a ``RunStream``, and swaps it in for each training
  forward pass that may draw, and back out after (only for models with random layers): runs
  with the same seed draw the same numbers, whatever else runs.

Code outside specbuilder that draws from the global generators in another thread at the same
time is not serialized, as it never is in PyTorch.
"""

from __future__ import annotations

import threading
from types import TracebackType

import torch

from specbuilder.spec import ModelSpec

GLOBAL_RNG = threading.RLock()
"""Held by whoever seeds or draws from torch's default generators inside specbuilder."""


def draws_random(spec: ModelSpec) -> bool:
    """Whether a model of ``spec`` draws random numbers in training mode: a layer that behaves
    differently while training without state to show for it (dropout, rrelu)."""
    return any(node.kind.passes_training for node in spec.nodes)


def _generators(device: torch.device) -> list[torch.Generator]:
    """The default generators a forward pass on ``device`` draws from."""
    generators = [torch.random.default_generator]
    if device.type == "cuda":
        torch.cuda.init()  # torch.cuda.default_generators is empty until CUDA is initialized
        generators.append(torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()])
    return generators


class RunStream:
    """One run's own random stream, seeded with ``seed``, drawn through torch's default generators.

    ``with stream:`` around a forward pass puts the stream into the default generators (holding
    ``GLOBAL_RNG``), and afterwards takes it out again and puts back what was there.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self._generators = _generators(device)
        self._states = [torch.Generator(device=g.device).manual_seed(seed).get_state() for g in self._generators]
        self._outside: list[torch.Tensor] = []

    def __enter__(self) -> None:
        GLOBAL_RNG.acquire()
        try:
            self._outside = [g.get_state() for g in self._generators]
            for generator, state in zip(self._generators, self._states, strict=True):
                generator.set_state(state)
        except BaseException:
            GLOBAL_RNG.release()
            raise

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        try:
            self._states = [g.get_state() for g in self._generators]
            for generator, state in zip(self._generators, self._outside, strict=True):
                generator.set_state(state)
        finally:
            self._outside = []
            GLOBAL_RNG.release()
