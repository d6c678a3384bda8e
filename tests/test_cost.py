"""The cost estimate: every registry kind prices itself, the hand-computed values, torch's own counter.

``Inferred.macs`` per kind is checked by hand here, and the matmuls and convolutions against
``torch.utils.flop_counter.FlopCounterMode``, which counts those ops only (2 FLOPs per multiply-add).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from specbuilder.activations import ACTIVATIONS
from specbuilder.compiler import compile_spec
from specbuilder.kinds import LayerKind
from specbuilder.layers import LAYERS
from specbuilder.spec import MAX_LAYERS, STYLES, ModelSpec, parse_spec

REGISTRY: dict[str, LayerKind] = {**LAYERS, **ACTIVATIONS}
VIEWS = {"flatten", "unflatten", "identity"}
"""Kinds that do no arithmetic (a view, or the input itself): they cost 0; every other kind costs more."""
COUNTED_BY_TORCH = {"linear", "conv1d", "conv2d"}
"""Kinds whose ops ``FlopCounterMode`` counts."""


def one_layer(layer: dict[str, Any], shape: list[int]) -> ModelSpec:
    return parse_spec({"input_shape": shape, "layers": [layer]})


@pytest.mark.parametrize("kind", list(REGISTRY.values()), ids=list(REGISTRY))
def test_every_kind_prices_its_example(kind: LayerKind) -> None:
    spec = one_layer({"type": kind.name, **kind.example}, list(kind.sample_shape))
    (node,) = spec.nodes
    assert type(node.macs) is int
    assert node.macs == 0 if kind.name in VIEWS else node.macs > 0
    assert (spec.macs_per_sample, spec.flops(5)) == (node.macs, 10 * node.macs)


HAND: dict[str, tuple[dict[str, Any], list[int], int]] = {
    "linear: 10 in x 3 out": ({"type": "linear", "out_features": 3}, [10], 30),
    "linear over [4, 10]: 4 rows x 10 x 3": ({"type": "linear", "out_features": 3, "bias": False}, [4, 10], 120),
    # out [6, 5, 6]: H (9 + 2 - 3) // 2 + 1 = 5, W 7 - 2 + 1 = 6; 180 outputs x 4 / 2 channels x 3 * 2 kernel.
    "conv2d grouped, strided, padded": (
        {"type": "conv2d", "out_channels": 6, "kernel_size": [3, 2], "stride": [2, 1], "padding": [1, 0], "groups": 2},
        [4, 9, 7], 2160,
    ),
    # out [4, 10]: 40 outputs x 3 channels x 3 kernel.
    "conv1d dilated, same padding": (
        {"type": "conv1d", "out_channels": 4, "kernel_size": 3, "dilation": 2, "padding": "same"}, [3, 10], 360,
    ),
    "max_pool2d: out [2, 3, 3] x 2 * 2 window": ({"type": "max_pool2d", "kernel_size": 2}, [2, 6, 6], 72),
    "avg_pool2d: out [1, 3, 3] x 3 * 3 window": ({"type": "avg_pool2d", "kernel_size": 3, "stride": 1}, [1, 5, 5], 81),
    "adaptive_avg_pool2d: 72 inputs": ({"type": "adaptive_avg_pool2d", "output_size": 1}, [2, 6, 6], 72),
    "batch_norm2d: 4 x 72 elements": ({"type": "batch_norm2d"}, [2, 6, 6], 288),
    "layer_norm: 4 x 18 elements": ({"type": "layer_norm"}, [3, 6], 72),
    "dropout: 1 x 6 elements": ({"type": "dropout"}, [6], 6),
    "flatten: a view": ({"type": "flatten"}, [2, 3, 4], 0),
    "identity: the input itself": ({"type": "identity"}, [6], 0),
    "relu: 1 x 12 elements": ({"type": "relu"}, [3, 4], 12),
    "softmax: 3 x 5 elements": ({"type": "softmax"}, [5], 15),
    "glu: 6 inputs, 3 outputs": ({"type": "glu"}, [6], 6),
}


@pytest.mark.parametrize(("layer", "shape", "macs"), list(HAND.values()), ids=list(HAND))
def test_macs_by_hand(layer: dict[str, Any], shape: list[int], macs: int) -> None:
    assert one_layer(layer, shape).nodes[0].macs == macs


def test_flops_are_two_per_multiply_add_per_row() -> None:
    spec = parse_spec({"input_shape": [10], "layers": [
        {"type": "linear", "out_features": 5}, {"type": "leaky_relu"},
        {"type": "linear", "out_features": 1, "activation": "sigmoid"},
    ]})
    assert [node.macs for node in spec.nodes] == [50, 5, 5, 1]
    assert (spec.macs_per_sample, spec.flops(8), spec.flops(0)) == (61, 976, 0)
    with pytest.raises(ValueError, match="rows must be >= 0, got -1"):
        spec.flops(-1)


TORCH_CASES: dict[str, tuple[list[dict[str, Any]], list[int]]] = {
    **{name: ([{"type": name, **LAYERS[name].example}], list(LAYERS[name].sample_shape)) for name in sorted(COUNTED_BY_TORCH)},
    **{name: ([layer], shape) for name, (layer, shape, _) in HAND.items() if layer["type"] in COUNTED_BY_TORCH},
    "cnn": ([
        {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1, "activation": "relu"},
        {"type": "batch_norm2d"}, {"type": "max_pool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "groups": 4, "stride": 2},
        {"type": "flatten"}, {"type": "linear", "out_features": 10}, {"type": "softmax"},
    ], [4, 16, 16]),
}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(("layers", "shape"), list(TORCH_CASES.values()), ids=list(TORCH_CASES))
def test_matmuls_and_convolutions_agree_with_torchs_counter(layers: list[dict[str, Any]], shape: list[int], style: str) -> None:
    spec = parse_spec({"input_shape": shape, "layers": layers})
    model = compile_spec(spec, style, device="cpu").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *shape))
    assert counter.get_total_flops() == 2 * sum(node.macs for node in spec.nodes if node.layer.type in COUNTED_BY_TORCH)


def test_a_spec_too_large_to_build_is_priced_from_its_shapes() -> None:
    layer = {"type": "conv2d", "out_channels": 1024, "kernel_size": 3, "padding": 1}
    spec = parse_spec({"input_shape": [1024, 64, 64], "layers": [layer] * MAX_LAYERS}, max_params=None)
    assert spec.num_params * 4 > 36 * 2**30  # its float32 weights alone: no module of it is ever built here
    per_layer = 1024 * 64 * 64 * 1024 * 9  # outputs x in_channels x kernel
    assert spec.macs_per_sample == MAX_LAYERS * per_layer == 39_582_418_599_936
    assert spec.flops(1000) == 2 * 1000 * MAX_LAYERS * per_layer
