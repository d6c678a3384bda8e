"""``ActivationMonitor``: per-layer activation statistics of a compiled model, kept on the device.

Hooks observe each monitored layer's input and output: forward hooks on the children of a
sequential model, a tap on a functional one (its stateless activations have no module), so
both styles give the same statistics for the same weights and inputs. Each pass adds to the
layer's ``LayerState`` on the device — one fused native kernel call for float32 on CPU, torch
reductions elsewhere — with no host sync; the states are views of one tensor (``Accumulators``), so
``stats()`` copies every state to the host at once and ``reset()`` empties them in one copy.
A monitor's layers and accumulators are made once per module, layer selection, bins and backend:
when a monitor is garbage they go back to a pool held against its module, and the next monitor
made like it takes them over, emptied, so a monitor attached per batch allocates nothing.
Statistics are always of float32 (or wider) values: half-precision activations (a model run
under autocast, or compiled in float16 / bfloat16) are widened first, which is exact, so they
take the native kernel on CPU and give the statistics of the very values the layer produced.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from specbuilder.errors import suggest
from specbuilder.spec import ModelSpec, Node
from specbuilder.stats import native
from specbuilder.stats.accumulators import Accumulators
from specbuilder.stats.pool import Pool
from specbuilder.stats.probe import Probe
from specbuilder.stats.report import summarize
from specbuilder.stats.state import LayerState
from specbuilder.stats.update import add_gradient, add_rows, native_config, native_update, torch_update
from specbuilder_wire.results import LayerStats

Layers = Literal["activations", "all"] | Sequence[str]
Backend = Literal["auto", "native", "torch"]
HALF_TYPES = (torch.float16, torch.bfloat16)
"""Widened to float32 before any statistic is taken."""


def select_nodes(spec: ModelSpec, layers: Layers) -> list[Node]:
    """The nodes ``layers`` names, in node order: every activation, every layer, or by name."""
    if layers == "activations":
        return [node for node in spec.nodes if node.is_activation]
    if layers == "all":
        return list(spec.nodes)
    if isinstance(layers, str):
        raise ValueError(f"layers must be 'activations', 'all' or a list of layer names, got {layers!r}")
    by_name = {node.name: node for node in spec.nodes}
    unknown = [name for name in layers if name not in by_name]
    if unknown:
        raise ValueError(f"no layer named {unknown[0]!r}{suggest(unknown[0], by_name)}; layers are {', '.join(by_name)}")
    wanted = set(layers)
    return [node for node in spec.nodes if node.name in wanted]


class _Layer:
    """One monitored layer at run time: its probe, its state (a view into its set's accumulators) and updater."""

    def __init__(self, probe: Probe, backend: Backend, state: LayerState) -> None:
        self.probe = probe
        self.backend = backend
        self.bind(state)

    def bind(self, state: LayerState) -> None:
        """Accumulate into ``state`` (on the device the layer's outputs will be on)."""
        self.state = state
        use_native = self.backend != "torch" and state.counts.device.type == "cpu" and native.kernel() is not None
        if self.backend == "native" and not use_native:
            raise RuntimeError(f"the native statistics kernel is unavailable: {native.build_error() or 'not a CPU tensor'}")
        self._config = native_config(self.probe, state) if use_native else None

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if y.numel() == 0:
            return
        if y.dtype in HALF_TYPES:
            y = y.float()
        if x.dtype in HALF_TYPES and self.probe.flat is not None:  # x is read only for the flat region
            x = x.float()
        if self._config is not None and y.dtype == torch.float32:
            native_update(self.probe, self._config, x, y)
        else:
            torch_update(self.probe, self.state, x, y)
        if self.probe.probability_dim is not None:
            add_rows(self.probe, self.state, y)

    def load(self, state: LayerState) -> None:
        if (state.bins, state.alive.numel()) != (self.probe.scheme.bins, self.probe.units):
            raise ValueError(
                f"state for {state.bins} bins and {state.alive.numel()} units does not fit layer {self.probe.name} "
                f"({self.probe.scheme.bins} bins, {self.probe.units} units)"
            )
        self.state.copy_(state)


class _LayerSet:
    """A monitor's layers with their accumulators, on one device: what the next monitor made like
    it takes over (see the module docstring)."""

    def __init__(self, probes: Sequence[Probe], backend: Backend, device: torch.device) -> None:
        self.accumulators = Accumulators([(probe.scheme.bins, probe.units) for probe in probes], device)
        self.layers = {probe.index: _Layer(probe, backend, state) for probe, state in zip(probes, self.accumulators.states)}

    def to(self, device: torch.device) -> None:
        """The model moved: the window goes with it."""
        self.accumulators.to(device)
        for layer, state in zip(self.layers.values(), self.accumulators.states, strict=True):
            layer.bind(state)


_POOL: Pool[_LayerSet] = Pool()


def _device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s outputs will be: its first parameter's or buffer's device, the CPU for a stateless module."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device("cpu") if first is None else first.device


class ActivationMonitor:
    """Statistics of a compiled model's layers over any number of passes (see ``LayerStats``).

    ``layers``: ``"activations"`` (default), ``"all"``, or a list of layer names. ``bins``:
    histogram bins per layer. ``grads``: also record the gradient norm reaching each layer's
    output in backward passes. ``backend``: ``"auto"`` uses the native kernel for float32 on
    CPU where it builds, torch ops otherwise; ``"torch"`` forces torch ops; ``"native"``
    insists on the kernel. Passes while ``enabled`` is False are not counted; while ``rows`` is
    a slice, only those rows (of dimension 0) of each pass are (one caller's part of a batch
    merged with others'). ``grad_scale``:
    what gradients are multiplied by in backward passes (fp16's loss scale, a device tensor, so
    reading it costs no sync); the norms recorded are divided by it. Half-precision activations
    are widened to float32 before any statistic is taken.

    Use as a context manager (hooks come off on exit) or call ``close()``.
    """

    def __init__(
        self, module: nn.Module, layers: Layers = "activations", bins: int = 64, grads: bool = True, backend: Backend = "auto"
    ) -> None:
        spec = getattr(module, "spec", None)
        if not isinstance(spec, ModelSpec):
            raise TypeError("ActivationMonitor needs a module made by specbuilder.compile_spec (it reads module.spec)")
        if not 2 <= bins <= 65536:
            raise ValueError(f"bins must be in [2, 65536], got {bins}")
        if backend not in ("auto", "native", "torch"):
            raise ValueError(f"backend must be 'auto', 'native' or 'torch', got {backend!r}")
        self.enabled = True
        self.rows: slice | None = None
        """The rows of each pass counted; None: all of them."""
        self.grads = grads
        self.grad_scale: torch.Tensor | float | None = None
        key: Hashable = (layers if isinstance(layers, str) else tuple(layers), bins, backend)
        kept = _POOL.take(module, key)
        if kept is None:
            kept = _LayerSet([Probe.of(node, bins) for node in select_nodes(spec, layers)], backend, _device_of(module))
        else:
            kept.accumulators.reset()
        self._set = kept
        self._layers = kept.layers
        weakref.finalize(self, _POOL.give, weakref.ref(module), key, kept)
        self._handles = self._attach(module)

    def _attach(self, module: nn.Module) -> list[RemovableHandle]:
        register_tap: Callable[[Callable[[int, torch.Tensor, torch.Tensor], None]], RemovableHandle] | None
        register_tap = getattr(module, "register_tap", None)
        if register_tap is not None:
            return [register_tap(self._on_output)]
        handles = []
        for index, layer in self._layers.items():
            child = module.get_submodule(layer.probe.name)
            handles.append(child.register_forward_hook(self._hook(index)))
        return handles

    def _hook(self, index: int) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            self._on_output(index, args[0], output)

        return hook

    def _on_output(self, index: int, x: torch.Tensor, y: torch.Tensor) -> None:
        layer = self._layers.get(index)
        if layer is None or not self.enabled:
            return
        if y.device != self._set.accumulators.device:
            self._set.to(y.device)
        if self.rows is not None:
            x, y = x[self.rows], y[self.rows]
        layer.observe(x, y)
        if self.grads and y.requires_grad:  # the hook holds the monitor: its accumulators are not taken over before the backward pass
            y.register_hook(partial(self._on_grad, layer, self.grad_scale))

    def _on_grad(self, layer: _Layer, scale: torch.Tensor | float | None, grad: torch.Tensor) -> None:
        add_gradient(layer.state, grad, scale)

    @property
    def probes(self) -> list[Probe]:
        """The monitored layers, in node order."""
        return [layer.probe for layer in self._layers.values()]

    def stats(self) -> list[LayerStats]:
        """Statistics of every monitored layer over the window, in node order (one host copy)."""
        return [summarize(layer.probe, *values) for layer, values in zip(self._layers.values(), self._set.accumulators.host())]

    def state(self) -> list[LayerState]:
        """A copy of every monitored layer's raw accumulators, in node order. Merge states with ``merge_states``."""
        return [layer.state.clone() for layer in self._layers.values()]

    def load_state(self, states: Sequence[LayerState]) -> None:
        """Replace the accumulators (e.g. with states merged across ranks), in node order."""
        if len(states) != len(self._layers):
            raise ValueError(f"expected {len(self._layers)} states, one per monitored layer, got {len(states)}")
        for layer, state in zip(self._layers.values(), states):
            layer.load(state)

    def reset(self) -> None:
        """Start a new window: forget everything seen so far (in place, one copy on the device)."""
        self._set.accumulators.reset()

    def close(self) -> None:
        """Remove the hooks; the statistics stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> ActivationMonitor:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()
