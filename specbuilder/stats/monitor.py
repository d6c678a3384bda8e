"""``ActivationMonitor``: per-layer activation statistics of a compiled model, kept on the device.

Hooks observe each monitored layer's input and output: forward hooks on the children of a
sequential model, a tap on a functional one (its stateless activations have no module), so
both styles give the same statistics for the same weights and inputs. Each pass adds to the
layer's ``LayerState`` on the device — one fused native kernel call for float32 on CPU, torch
reductions elsewhere — with no host sync; ``stats()`` copies every state to the host at once.
Statistics are always of float32 (or wider) values: half-precision activations (a model run
under autocast, or compiled in float16 / bfloat16) are widened first, which is exact, so they
take the native kernel on CPU and give the statistics of the very values the layer produced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from specbuilder.errors import suggest
from specbuilder.spec import ModelSpec, Node
from specbuilder.stats import native
from specbuilder.stats.probe import Probe
from specbuilder.stats.report import LayerStats, summarize
from specbuilder.stats.state import LayerState
from specbuilder.stats.update import add_gradient, add_rows, native_config, native_update, torch_update

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
    """One monitored layer at run time: its probe, its state (made on first sight) and updater."""

    def __init__(self, probe: Probe, backend: Backend) -> None:
        self.probe = probe
        self.backend = backend
        self.state: LayerState | None = None
        self._config: native.Config | None = None

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if y.numel() == 0:
            return
        if y.dtype in HALF_TYPES:
            y = y.float()
        if x.dtype in HALF_TYPES and self.probe.flat is not None:  # x is read only for the flat region
            x = x.float()
        if self.state is None:
            self._set_state(LayerState.empty(self.probe.scheme.bins, self.probe.units, y.device))
        elif self.state.counts.device != y.device:  # the model moved: its window goes with it
            self._set_state(self.state.to(y.device))
        assert self.state is not None
        if self._config is not None and y.dtype == torch.float32:
            native_update(self.probe, self._config, x, y)
        else:
            torch_update(self.probe, self.state, x, y)
        if self.probe.probability_dim is not None:
            add_rows(self.probe, self.state, y)

    def _set_state(self, state: LayerState) -> None:
        self.state = state
        use_native = self.backend != "torch" and state.counts.device.type == "cpu" and native.kernel() is not None
        if self.backend == "native" and not use_native:
            raise RuntimeError(f"the native statistics kernel is unavailable: {native.build_error() or 'not a CPU tensor'}")
        self._config = native_config(self.probe, state) if use_native else None

    def load(self, state: LayerState) -> None:
        if (state.bins, state.alive.numel()) != (self.probe.scheme.bins, self.probe.units):
            raise ValueError(
                f"state for {state.bins} bins and {state.alive.numel()} units does not fit layer {self.probe.name} "
                f"({self.probe.scheme.bins} bins, {self.probe.units} units)"
            )
        device = self.state.counts.device if self.state is not None else state.counts.device
        self._set_state(LayerState.empty(self.probe.scheme.bins, self.probe.units, device).copy_(state))

    def on_grad(self, grad: torch.Tensor, scale: torch.Tensor | float | None = None) -> None:
        if self.state is not None:
            add_gradient(self.state, grad, scale)


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
        self._layers = {node.index: _Layer(Probe.of(node, bins), backend) for node in select_nodes(spec, layers)}
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
        if self.rows is not None:
            x, y = x[self.rows], y[self.rows]
        layer.observe(x, y)
        if self.grads and y.requires_grad:
            y.register_hook(layer.on_grad if self.grad_scale is None else partial(layer.on_grad, scale=self.grad_scale))

    @property
    def probes(self) -> list[Probe]:
        """The monitored layers, in node order."""
        return [layer.probe for layer in self._layers.values()]

    def stats(self) -> list[LayerStats]:
        """Statistics of every monitored layer over the window, in node order (one host copy)."""
        seen = [layer for layer in self._layers.values() if layer.state is not None]
        host: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        if seen:
            parts = []
            for layer in seen:
                assert layer.state is not None
                parts += [layer.state.counts, layer.state.moments.view(torch.int64), layer.state.alive.sum().reshape(1)]
            flat = torch.cat(parts).cpu().numpy()
            offset = 0
            for layer in seen:
                assert layer.state is not None
                n_counts, n_moments = layer.state.counts.numel(), layer.state.moments.numel()
                counts = flat[offset:offset + n_counts]
                moments = flat[offset + n_counts:offset + n_counts + n_moments].view(np.float64)
                host[layer.probe.index] = (counts, moments, int(flat[offset + n_counts + n_moments]))
                offset += n_counts + n_moments + 1
        result = []
        for index, layer in self._layers.items():
            if index not in host:
                empty = LayerState.empty(layer.probe.scheme.bins, layer.probe.units)
                host[index] = (empty.counts.numpy(), empty.moments.numpy(), 0)
            result.append(summarize(layer.probe, *host[index]))
        return result

    def state(self) -> list[LayerState]:
        """A copy of every monitored layer's raw accumulators, in node order (an empty state on
        the CPU for a layer not seen yet). Merge states with ``merge_states``."""
        return [
            layer.state.clone() if layer.state is not None else LayerState.empty(layer.probe.scheme.bins, layer.probe.units)
            for layer in self._layers.values()
        ]

    def load_state(self, states: Sequence[LayerState]) -> None:
        """Replace the accumulators (e.g. with states merged across ranks), in node order."""
        if len(states) != len(self._layers):
            raise ValueError(f"expected {len(self._layers)} states, one per monitored layer, got {len(states)}")
        for layer, state in zip(self._layers.values(), states):
            layer.load(state)

    def reset(self) -> None:
        """Start a new window: forget everything seen so far."""
        for layer in self._layers.values():
            if layer.state is not None:
                layer.state.copy_(LayerState.empty(layer.probe.scheme.bins, layer.probe.units, layer.state.counts.device))

    def close(self) -> None:
        """Remove the hooks; the statistics stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> ActivationMonitor:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()
