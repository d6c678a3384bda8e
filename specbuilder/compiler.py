"""Compile a ``ModelSpec`` to a real ``torch.nn.Module``, in either style.

``sequential``: an ``nn.Sequential`` whose children carry the spec's module names.
``functional``: a module holding only stateful layers as submodules, whose ``forward`` calls
``torch`` / ``torch.nn.functional`` for the rest, as a person would write it by hand.
Both styles have the same ``state_dict`` keys and give identical outputs for the same weights.
Every compiled module keeps its spec in ``module.spec``.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from specbuilder.devices import resolve_device, resolve_dtype
from specbuilder.kinds import PASS_THROUGH
from specbuilder.registry import resolve
from specbuilder.rng import GLOBAL_RNG
from specbuilder.spec import DEFAULT_MAX_PARAMS, STYLES, ModelSpec, Node, Style, parse_spec

Tap = Callable[[int, torch.Tensor, torch.Tensor], None]
"""Called after each op of a functional model with ``(node index, input, output)``."""

SpecLike = ModelSpec | Mapping[str, Any] | str | bytes | Path


def build_module(node: Node) -> nn.Module:
    """The torch module for one node, constructed from its inferred keyword arguments."""
    return resolve(node.kind.module)(**node.kwargs)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass(frozen=True)
class FunctionalOp:
    """One line of a functional ``forward``: a submodule call, or a function with fixed arguments."""

    name: str
    function: Callable[..., torch.Tensor] | None
    """None calls the submodule ``name``."""
    kwargs: Mapping[str, Any]
    training: bool

    @classmethod
    def of(cls, node: Node) -> FunctionalOp:
        kind = node.kind
        if kind.stateful:
            return cls(node.name, None, {}, False)
        if kind.functional == PASS_THROUGH:
            return cls(node.name, _identity, {}, False)
        kwargs = {kind.functional_args.get(k, k): v for k, v in node.kwargs.items()}
        return cls(node.name, resolve(kind.functional), kwargs, kind.passes_training)


class FunctionalModel(nn.Module):
    """A model whose ``forward`` calls torch functions; only stateful layers are submodules.

    It has no modules to hook for stateless activations, so it offers taps instead:
    ``register_tap(fn)`` calls ``fn(index, input, output)`` after every op.
    """

    def __init__(self, spec: ModelSpec, modules: Mapping[str, nn.Module]) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self._ops = tuple(FunctionalOp.of(node) for node in spec.nodes)
        self._taps: OrderedDict[int, Tap] = OrderedDict()  # RemovableHandle holds it by weak reference
        self.spec = spec

    def register_tap(self, tap: Tap) -> RemovableHandle:
        """Observe every op's input and output; remove with the returned handle."""
        handle = RemovableHandle(self._taps)
        self._taps[handle.id] = tap
        return handle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, op in enumerate(self._ops):
            if op.function is None:
                y = self._modules[op.name](x)
            elif op.training:
                y = op.function(x, training=self.training, **op.kwargs)
            else:
                y = op.function(x, **op.kwargs)
            for tap in self._taps.values():
                tap(index, x, y)
            x = y
        return x

    def extra_repr(self) -> str:
        stateless = [op.name for op in self._ops if op.function is not None]
        return f"spec={self.spec.name!r}, functional ops: {', '.join(stateless) or 'none'}"


def compile_spec(
    spec: SpecLike,
    style: Style = "sequential",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    seed: int | None = None,
    max_params: int | None = DEFAULT_MAX_PARAMS,
    init: bool = True,
) -> nn.Module:
    """A ``torch.nn.Module`` for ``spec`` (a ``ModelSpec``, dict, JSON text or path).

    ``seed`` makes initialization reproducible and leaves the global RNG untouched (without
    it, initialization draws from the global RNG as plain PyTorch does); the same seed gives
    the same weights in both styles. ``init=False`` skips weight initialization
    (the memory is allocated but not written) for weights about to be loaded.
    Raises ``SpecError`` for an invalid spec.
    """
    if not isinstance(spec, ModelSpec) or max_params != DEFAULT_MAX_PARAMS:
        spec = parse_spec(spec, max_params=max_params)
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    target, float_type = resolve_device(device), resolve_dtype(dtype)
    with contextlib.ExitStack() as scope:
        if not init:
            scope.enter_context(torch.device("meta"))
        else:  # initialization draws from torch's global generator: one build at a time (see specbuilder.rng)
            scope.enter_context(GLOBAL_RNG)
            if seed is not None:
                # the CPU generator only: modules are built on the CPU, and fork_rng(devices=[]) restores only
                # it; torch.manual_seed would also reseed every CUDA generator, and nothing would restore them
                scope.enter_context(torch.random.fork_rng(devices=[]))
                torch.random.default_generator.manual_seed(seed)
        model = _build(spec, style)
    if not init:
        return model.to_empty(device=target).to(dtype=float_type)
    if target.type != "cpu" or float_type != torch.get_default_dtype():
        model = model.to(device=target, dtype=float_type)
    return model


def _build(spec: ModelSpec, style: Style) -> nn.Module:
    if style == "sequential":
        model = nn.Sequential(OrderedDict((node.name, build_module(node)) for node in spec.nodes))
        model.spec = spec
        return model
    return FunctionalModel(spec, {node.name: build_module(node) for node in spec.nodes if node.kind.stateful})


class CompileCache:
    """A bounded, thread-safe LRU of compiled modules keyed by the spec's canonical hash.

    Cached modules are shared: use them for inference, compile afresh to train.
    """

    def __init__(self, maxsize: int = 32) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple[str, str, str, str], nn.Module] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, spec: ModelSpec, style: Style = "sequential", device: str | torch.device = "auto", dtype: str | torch.dtype | None = None) -> nn.Module:
        key = (spec.spec_hash(), style, str(resolve_device(device)), str(resolve_dtype(dtype)))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        model = compile_spec(spec, style, device, dtype).eval()
        with self._lock:
            self._items[key] = model
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return model

    def __len__(self) -> int:
        return len(self._items)
