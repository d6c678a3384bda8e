"""The compiler: every registry kind compiles in both styles, with the inferred shapes and parameter
counts; the styles share state_dicts and outputs; seeds, devices, dtypes, ``init=False``, the cache."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from specbuilder.activations import ACTIVATIONS
from specbuilder.compiler import CompileCache, FunctionalModel, compile_spec
from specbuilder.errors import SpecError
from specbuilder.kinds import LayerKind
from specbuilder.spec import KINDS, LAYER_MODELS, ModelSpec, parse_spec

STYLES = ("sequential", "functional")
TUTORIAL = {
    "name": "simple-nn",
    "input_shape": [10],
    "layers": [
        {"type": "linear", "out_features": 5, "name": "fc1"},
        {"type": "relu", "name": "relu"},
        {"type": "linear", "out_features": 1, "name": "fc2"},
    ],
}


def example_spec(kind: LayerKind) -> ModelSpec:
    return parse_spec({"input_shape": list(kind.sample_shape), "layers": [{"type": kind.name, **kind.example}]})


def run(model: nn.Module, x: torch.Tensor, training: bool) -> torch.Tensor:
    model.train(training)
    torch.manual_seed(0)  # dropout and rrelu draw while training
    with torch.no_grad():
        return model(x)


def plain_tutorial() -> nn.Sequential:
    return nn.Sequential(OrderedDict(fc1=nn.Linear(10, 5), relu=nn.ReLU(), fc2=nn.Linear(5, 1)))


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_every_kind_compiles_with_inferred_shape_and_parameter_count(kind: LayerKind) -> None:
    spec = example_spec(kind)
    x = torch.randn(3, *kind.sample_shape)
    for style in STYLES:
        model = compile_spec(spec, style, device="cpu")
        assert model.spec is spec
        assert tuple(model(x).shape) == (3, *spec.output_shape), style
        assert sum(p.numel() for p in model.parameters()) == spec.num_params, style
    sequential = compile_spec(spec, device="cpu")
    assert [sum(p.numel() for p in module.parameters()) for module in sequential] == [node.num_params for node in spec.nodes]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_styles_share_state_dict_and_outputs(kind: LayerKind, training: bool) -> None:
    spec = example_spec(kind)
    sequential = compile_spec(spec, "sequential", device="cpu", seed=1)
    functional = compile_spec(spec, "functional", device="cpu", seed=2)
    assert list(sequential.state_dict()) == list(functional.state_dict())
    functional.load_state_dict(sequential.state_dict())
    x = torch.randn(4, *kind.sample_shape)
    assert torch.equal(run(sequential, x, training), run(functional, x, training))
    # Training updated batch-norm statistics the same way in both.
    for (key, a), b in zip(sequential.state_dict().items(), functional.state_dict().values()):
        assert torch.equal(a, b), key


def test_tutorial_by_hand_and_as_spec_are_the_same_model() -> None:
    by_hand = plain_tutorial()
    for style in STYLES:
        model = compile_spec(TUTORIAL, style, device="cpu")
        assert list(model.state_dict()) == list(by_hand.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
        model.load_state_dict(by_hand.state_dict())
        x = torch.randn(8, 10)
        assert torch.equal(model(x), by_hand(x))


def test_same_seed_same_weights_as_plain_pytorch() -> None:
    torch.manual_seed(3)
    expected = plain_tutorial().state_dict()
    for style in STYLES:
        got = compile_spec(TUTORIAL, style, device="cpu", seed=3).state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in expected), style


def test_same_seed_same_weights_in_both_styles() -> None:
    spec = parse_spec({"input_shape": [3, 8, 8], "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "activation": {"type": "prelu", "num_parameters": 4}},
        {"type": "batch_norm2d"}, {"type": "flatten"}, {"type": "linear", "out_features": 2},
    ]})
    a = compile_spec(spec, "sequential", device="cpu", seed=11).state_dict()
    b = compile_spec(spec, "functional", device="cpu", seed=11).state_dict()
    c = compile_spec(spec, "sequential", device="cpu", seed=12).state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv2d_0.weight"], c["conv2d_0.weight"])


def test_seeded_compile_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(5)
    before = torch.get_rng_state()
    compile_spec(TUTORIAL, device="cpu", seed=9)
    compile_spec(TUTORIAL, "functional", device="cpu", seed=9)
    assert torch.equal(torch.get_rng_state(), before)


def test_unseeded_compile_draws_from_the_global_rng_like_pytorch() -> None:
    torch.manual_seed(4)
    expected = plain_tutorial().state_dict()
    after_torch = torch.get_rng_state()
    torch.manual_seed(4)
    got = compile_spec(TUTORIAL, device="cpu").state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert torch.equal(torch.get_rng_state(), after_torch)
    again = compile_spec(TUTORIAL, device="cpu").state_dict()
    assert not torch.equal(again["fc1.weight"], got["fc1.weight"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError) as info:
        compile_spec(TUTORIAL, device="cuda")
    assert str(info.value) == "device 'cuda' was asked for, but CUDA is not available here; use 'auto' or 'cpu'"
    assert next(compile_spec(TUTORIAL, device="auto").parameters()).device == torch.device("cpu")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        ({"dtype": "int8"}, "dtype must be one of float32, float64, float16, bfloat16, got 'int8'"),
        ({"dtype": torch.int64}, "dtype must be a floating type (float32, float64, float16, bfloat16), got torch.int64"),
        ({"style": "graph"}, "style must be one of sequential, functional, got 'graph'"),
    ],
)
def test_bad_options_are_value_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        compile_spec(TUTORIAL, **kwargs)
    assert str(info.value) == message


def test_invalid_spec_is_a_spec_error_and_max_params_applies() -> None:
    with pytest.raises(SpecError) as info:
        compile_spec({"input_shape": [10], "layers": [{"type": "linear", "out_features": "5"}]})
    assert info.value.errors() == [{"path": "layers[0].out_features", "message": "must be an integer, got str '5'", "type": "int_type"}]
    spec = parse_spec(TUTORIAL)
    with pytest.raises(SpecError) as info:
        compile_spec(spec, max_params=10)
    assert info.value.errors() == [
        {"path": "layers", "message": "the model has 61 parameters, over the limit of 10 (max_params)", "type": "too_many_parameters"},
    ]


def test_compile_accepts_json_text() -> None:
    model = compile_spec(json.dumps(TUTORIAL), device="cpu")
    assert model.spec == parse_spec(TUTORIAL)


@pytest.mark.parametrize("style", STYLES)
def test_init_false_gives_a_model_ready_for_loading(style: str) -> None:
    spec = parse_spec({"input_shape": [2, 6, 6], "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "activation": "prelu"},
        {"type": "batch_norm2d"}, {"type": "flatten"}, {"type": "linear", "out_features": 3},
    ]})
    source = compile_spec(spec, style, device="cpu", seed=0)
    empty = compile_spec(spec, style, device="cpu", dtype="float64", init=False)
    assert list(empty.state_dict()) == list(source.state_dict())
    assert all(t.device.type == "cpu" and t.dtype == torch.float64 for k, t in empty.state_dict().items() if "num_batches" not in k)
    assert all(p.requires_grad for p in empty.parameters())
    empty.load_state_dict(source.state_dict())
    x = torch.randn(5, 2, 6, 6)
    torch.testing.assert_close(empty.eval()(x.double()), source.eval()(x).double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("style", STYLES)
def test_float64(style: str) -> None:
    model = compile_spec(TUTORIAL, style, device="cpu", dtype="float64", seed=0)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert model(torch.randn(2, 10, dtype=torch.float64)).dtype == torch.float64
    same = compile_spec(TUTORIAL, style, device="cpu", dtype=torch.float64, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters()))


def test_functional_model_keeps_only_stateful_layers_as_submodules() -> None:
    model = compile_spec({"input_shape": [6], "layers": [
        {"type": "linear", "out_features": 4, "name": "fc", "activation": "prelu"}, {"type": "dropout"}, {"type": "tanh"},
    ]}, "functional", device="cpu")
    assert isinstance(model, FunctionalModel)
    assert [name for name, _ in model.named_children()] == ["fc", "prelu_1"]
    assert "functional ops: dropout_2, tanh_3" in repr(model)


def test_functional_taps_see_every_op() -> None:
    model = compile_spec(TUTORIAL, "functional", device="cpu")
    seen: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []
    handle = model.register_tap(lambda i, x, y: seen.append((i, tuple(x.shape), tuple(y.shape))))
    model(torch.randn(2, 10))
    assert seen == [(0, (2, 10), (2, 5)), (1, (2, 5), (2, 5)), (2, (2, 5), (2, 1))]
    handle.remove()
    model(torch.randn(2, 10))
    assert len(seen) == 3


def test_compile_cache_is_an_lru() -> None:
    cache = CompileCache(maxsize=2)
    a, b, c = (parse_spec({**TUTORIAL, "name": name}) for name in "abc")
    model_a = cache.get(a, device="cpu")
    assert (cache.hits, cache.misses, len(cache)) == (0, 1, 1)
    assert cache.get(parse_spec(a.to_json()), device="cpu") is model_a  # keyed by content, not identity
    assert not model_a.training
    model_b = cache.get(b, device="cpu")
    assert cache.get(a, device="cpu") is model_a  # a is now the most recent
    cache.get(c, device="cpu")  # evicts b, the least recent
    assert (cache.hits, cache.misses, len(cache)) == (2, 3, 2)
    assert cache.get(a, device="cpu") is model_a
    assert cache.get(b, device="cpu") is not model_b
    assert (cache.hits, cache.misses, len(cache)) == (3, 4, 2)


def test_compile_cache_keys_on_style_and_dtype() -> None:
    cache = CompileCache()
    spec = parse_spec(TUTORIAL)
    models = {cache.get(spec, style, "cpu", dtype) for style in STYLES for dtype in ("float32", "float64")}
    assert len(models) == 4 and (cache.hits, cache.misses) == (0, 4)
    assert cache.get(spec, "functional", "cpu", torch.float64) in models
    assert cache.hits == 1


@pytest.mark.cuda
@pytest.mark.parametrize("style", STYLES)
def test_compiles_and_runs_on_cuda(style: str) -> None:
    spec = parse_spec({"input_shape": [2, 8, 8], "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "activation": "relu"},
        {"type": "batch_norm2d"}, {"type": "flatten"}, {"type": "linear", "out_features": 3, "activation": {"type": "step", "surrogate": "ste"}},
    ]})
    model = compile_spec(spec, style, device="cuda", seed=0)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    x = torch.randn(4, 2, 8, 8, device="cuda", requires_grad=True)
    y = model(x)
    y.sum().backward()
    assert y.shape == (4, 3) and y.device.type == "cuda" and x.grad is not None
    cpu = compile_spec(spec, style, device="cpu", seed=0)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(model.state_dict().values(), cpu.state_dict().values()))


# --- hypothesis: random valid specs ---------------------------------------------------------


def activation_choices() -> list[dict[str, Any]]:
    """Every activation, with its example parameters and (where it has them) its defaults."""
    out = []
    for kind in ACTIVATIONS.values():
        out.append({"type": kind.name, **kind.example})
        if not any(LAYER_MODELS[kind.name].model_fields[name].is_required() for name in kind.params):
            out.append({"type": kind.name})
    return out


ACTIVATION = st.none() | st.sampled_from(activation_choices())
EVEN = st.integers(1, 3).map(lambda k: 2 * k)  # glu halves a size


def with_activation(layer: dict[str, Any], activation: dict[str, Any] | None) -> dict[str, Any]:
    return layer if activation is None else {**layer, "activation": activation}


@st.composite
def mlps(draw: st.DrawFn) -> dict[str, Any]:
    layers: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        layers.append(with_activation({"type": "linear", "out_features": draw(EVEN), "bias": draw(st.booleans())}, draw(ACTIVATION)))
        extra = draw(st.sampled_from([None, {"type": "dropout", "p": 0.1}, {"type": "batch_norm1d"}, {"type": "layer_norm"}]))
        if extra:
            layers.append(extra)
    return {"input_shape": [draw(st.integers(1, 6))], "layers": layers}


@st.composite
def cnns(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.sampled_from([1, 2]))
    input_shape = [draw(st.integers(1, 3)), *[draw(st.sampled_from([4, 8]))] * n]
    size = input_shape[1]  # the last dimension, the smallest: poolings halve it, and so does glu over dim -1
    layers: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 2))):
        conv = {"type": f"conv{n}d", "out_channels": draw(EVEN), "kernel_size": draw(st.integers(1, 3)), "padding": "same"}
        activation = draw(ACTIVATION)
        if activation is not None and activation["type"] == "glu" and activation.get("dim", -1) == -1:
            if size % 2:
                activation = None  # glu halves the last dimension, so it must be even
            else:
                size //= 2
        layers.append(with_activation(conv, activation))
        if n == 2 and draw(st.booleans()):
            layers.append({"type": "batch_norm2d"})
        if size >= 2 and draw(st.booleans()):
            layers.append({"type": f"max_pool{n}d", "kernel_size": 2})
            size //= 2
    layers += [{"type": "flatten"}, with_activation({"type": "linear", "out_features": draw(EVEN)}, draw(ACTIVATION))]
    return {"input_shape": input_shape, "layers": layers}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@settings(max_examples=50, deadline=None)
@given(mlps() | cnns(), st.integers(1, 3))
def test_random_valid_specs_compile_and_run_with_the_inferred_shape(source: dict[str, Any], batch: int) -> None:
    spec = parse_spec(source)
    assert parse_spec(spec.to_json()) == spec
    x = torch.randn(batch, *spec.input_shape)
    sequential = compile_spec(spec, "sequential", device="cpu", seed=0).eval()
    functional = compile_spec(spec, "functional", device="cpu").eval()
    functional.load_state_dict(sequential.state_dict())
    with torch.no_grad():
        y = sequential(x)
        assert tuple(y.shape) == (batch, *spec.output_shape)
        assert torch.equal(functional(x), y)
    assert sum(p.numel() for p in sequential.parameters()) == spec.num_params
