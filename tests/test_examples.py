"""Every spec in examples/ validates, compiles in both styles and has the output it is meant to have."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from specbuilder.compiler import STYLES, compile_spec
from specbuilder.spec import parse_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

OUTPUT_SHAPES = {
    "tutorial.json": (1,),
    "tutorial_sigmoid.json": (1,),
    "tutorial_softmax.json": (3,),
    "spirals_mlp.json": (3,),
    "digits_cnn.json": (10,),
}
"""Every example and its intended per-sample output shape; a new example must be listed here."""


def test_every_example_is_listed() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.json")) == sorted(OUTPUT_SHAPES)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("file", sorted(OUTPUT_SHAPES))
def test_example_validates_compiles_and_runs(file: str, style: str) -> None:
    spec = parse_spec(EXAMPLES / file)
    assert spec.output_shape == OUTPUT_SHAPES[file]
    model = compile_spec(spec, style, device="cpu", seed=0).eval()
    assert sum(p.numel() for p in model.parameters()) == spec.num_params
    with torch.inference_mode():
        out = model(torch.randn(5, *spec.input_shape, generator=torch.Generator().manual_seed(1)))
    assert out.shape == (5, *OUTPUT_SHAPES[file])
    assert torch.isfinite(out).all()


def _tutorial_torch(out_features: int, head: nn.Module | None) -> nn.Sequential:
    """The classic tutorial model written by hand: Linear(10, 5) -> ReLU -> Linear(5, k) [-> head]."""
    layers = OrderedDict(fc1=nn.Linear(10, 5), relu=nn.ReLU(), fc2=nn.Linear(5, out_features))
    if head is not None:
        layers[type(head).__name__.lower()] = head
    return nn.Sequential(layers)


@pytest.mark.parametrize(
    ("file", "out_features", "head"),
    [("tutorial.json", 1, None), ("tutorial_sigmoid.json", 1, nn.Sigmoid()), ("tutorial_softmax.json", 3, nn.Softmax(dim=1))],
)
@pytest.mark.parametrize("style", STYLES)
def test_tutorials_are_the_hand_written_model(file: str, out_features: int, head: nn.Module | None, style: str) -> None:
    reference = _tutorial_torch(out_features, head).eval()
    model = compile_spec(EXAMPLES / file, style, device="cpu").eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(8, 10, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_output_heads_do_what_they_say() -> None:
    x = torch.randn(16, 10, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        probabilities = compile_spec(EXAMPLES / "tutorial_softmax.json", device="cpu", seed=0)(x)
        sigmoid = compile_spec(EXAMPLES / "tutorial_sigmoid.json", device="cpu", seed=0)(x)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(16))
    assert ((sigmoid > 0) & (sigmoid < 1)).all()
