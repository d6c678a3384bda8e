"""The activation registry, entry by entry: torch equivalence, bounds, names, flat regions, ranges, step.

Every test is parametrized over ``ACTIVATIONS``, so a new entry is tested the day it is added;
``TORCH`` below is the independent oracle (torch's own module and function, written by hand),
and a test fails until a new entry has one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import annotated_types
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specbuilder.activations import ACTIVATIONS
from specbuilder.compiler import compile_spec
from specbuilder.errors import SpecError
from specbuilder.kinds import NO_FLAT, ActivationKind, FlatBounds, FlatRegion
from specbuilder.spec import LAYER_MODELS, ModelSpec, lookup_type, parse_spec
from specbuilder.torch_ops import step

P = Mapping[str, Any]
ONE = torch.ones(())

TORCH: dict[str, tuple[Callable[[P], nn.Module] | None, Callable[[torch.Tensor, P, bool], torch.Tensor]]] = {
    "identity": (lambda p: nn.Identity(), lambda x, p, t: x),
    "relu": (lambda p: nn.ReLU(), lambda x, p, t: F.relu(x)),
    "relu6": (lambda p: nn.ReLU6(), lambda x, p, t: F.relu6(x)),
    "leaky_relu": (lambda p: nn.LeakyReLU(p["negative_slope"]), lambda x, p, t: F.leaky_relu(x, p["negative_slope"])),
    "prelu": (
        lambda p: nn.PReLU(p["num_parameters"], p["init"]),
        lambda x, p, t: F.prelu(x, torch.full((p["num_parameters"],), p["init"])),
    ),
    "rrelu": (lambda p: nn.RReLU(p["lower"], p["upper"]), lambda x, p, t: F.rrelu(x, p["lower"], p["upper"], training=t)),
    "elu": (lambda p: nn.ELU(p["alpha"]), lambda x, p, t: F.elu(x, p["alpha"])),
    "selu": (lambda p: nn.SELU(), lambda x, p, t: F.selu(x)),
    "celu": (lambda p: nn.CELU(p["alpha"]), lambda x, p, t: F.celu(x, p["alpha"])),
    "gelu": (lambda p: nn.GELU(p["approximate"]), lambda x, p, t: F.gelu(x, approximate=p["approximate"])),
    "silu": (lambda p: nn.SiLU(), lambda x, p, t: F.silu(x)),
    "mish": (lambda p: nn.Mish(), lambda x, p, t: F.mish(x)),
    "sigmoid": (lambda p: nn.Sigmoid(), lambda x, p, t: torch.sigmoid(x)),
    "hardsigmoid": (lambda p: nn.Hardsigmoid(), lambda x, p, t: F.hardsigmoid(x)),
    "logsigmoid": (lambda p: nn.LogSigmoid(), lambda x, p, t: F.logsigmoid(x)),
    "tanh": (lambda p: nn.Tanh(), lambda x, p, t: torch.tanh(x)),
    "hardtanh": (lambda p: nn.Hardtanh(p["min_val"], p["max_val"]), lambda x, p, t: F.hardtanh(x, p["min_val"], p["max_val"])),
    "hardswish": (lambda p: nn.Hardswish(), lambda x, p, t: F.hardswish(x)),
    "softplus": (lambda p: nn.Softplus(p["beta"], p["threshold"]), lambda x, p, t: F.softplus(x, p["beta"], p["threshold"])),
    "softsign": (lambda p: nn.Softsign(), lambda x, p, t: F.softsign(x)),
    "softshrink": (lambda p: nn.Softshrink(p["lambd"]), lambda x, p, t: F.softshrink(x, p["lambd"])),
    "hardshrink": (lambda p: nn.Hardshrink(p["lambd"]), lambda x, p, t: F.hardshrink(x, p["lambd"])),
    "tanhshrink": (lambda p: nn.Tanhshrink(), lambda x, p, t: F.tanhshrink(x)),
    "threshold": (lambda p: nn.Threshold(p["threshold"], p["value"]), lambda x, p, t: F.threshold(x, p["threshold"], p["value"])),
    "softmax": (lambda p: nn.Softmax(p["dim"]), lambda x, p, t: F.softmax(x, p["dim"])),
    "log_softmax": (lambda p: nn.LogSoftmax(p["dim"]), lambda x, p, t: F.log_softmax(x, p["dim"])),
    "softmin": (lambda p: nn.Softmin(p["dim"]), lambda x, p, t: F.softmin(x, p["dim"])),
    "glu": (lambda p: nn.GLU(p["dim"]), lambda x, p, t: F.glu(x, p["dim"])),
    # torch has no step module; torch.heaviside has no backward, but its forward is the oracle.
    "step": (None, lambda x, p, t: torch.heaviside(x - p["threshold"], ONE)),
}

# Parameter sets beyond defaults, example and bounds, where a flat region or range once went wrong.
EDGE_PARAMS: list[tuple[str, dict[str, Any]]] = [
    ("elu", {"alpha": 0.0}),
    ("elu", {"alpha": 200.0}),
    ("leaky_relu", {"negative_slope": 1000.0}),
    ("softplus", {"beta": 1.0, "threshold": -5.0}),
    ("softplus", {"beta": 0.5, "threshold": 1.0}),
    ("hardtanh", {"min_val": 0.5, "max_val": 0.75}),
    ("threshold", {"threshold": -2.0, "value": 3.0}),
    ("step", {"threshold": -1.5, "surrogate": "none"}),
]

KINDS = list(ACTIVATIONS.values())
IDS = list(ACTIVATIONS)


def one_layer(kind: ActivationKind, params: P, shape: tuple[int, ...] | None = None) -> ModelSpec:
    return parse_spec({"input_shape": list(shape or kind.sample_shape), "layers": [{"type": kind.name, **params}]})


def has_defaults(kind: ActivationKind) -> bool:
    return not any(LAYER_MODELS[kind.name].model_fields[name].is_required() for name in kind.params)


def bounds(kind: ActivationKind) -> list[tuple[str, Any]]:
    """``(parameter, annotated_types constraint)`` for every bounded parameter of ``kind``."""
    fields = LAYER_MODELS[kind.name].model_fields
    return [
        (name, m)
        for name in kind.params
        for m in fields[name].metadata
        if isinstance(m, (annotated_types.Ge, annotated_types.Gt, annotated_types.Le, annotated_types.Lt))
    ]


def at_bounds(kind: ActivationKind) -> dict[str, Any]:
    """Every bounded parameter at the edge of its range (just inside, for a strict bound)."""
    out: dict[str, Any] = {}
    for name, m in bounds(kind):
        if isinstance(m, annotated_types.Ge):
            out[name] = m.ge
        elif isinstance(m, annotated_types.Le):
            out[name] = m.le
        else:
            step_in = 1 if LAYER_MODELS[kind.name].model_fields[name].annotation is int else 0.01
            out[name] = m.gt + step_in if isinstance(m, annotated_types.Gt) else m.lt - step_in
    return out


def variants() -> list[Any]:
    """``(kind, params)`` cases: defaults, example, bounds and the edge cases above."""
    cases = []
    for kind in KINDS:
        if has_defaults(kind):
            cases.append(pytest.param(kind, {}, id=f"{kind.name}-defaults"))
        if kind.example:
            cases.append(pytest.param(kind, dict(kind.example), id=f"{kind.name}-example"))
        if bounds(kind):
            cases.append(pytest.param(kind, {**kind.example, **at_bounds(kind)}, id=f"{kind.name}-bounds"))
    cases += [pytest.param(ACTIVATIONS[name], params, id=f"{name}-edge{i}") for i, (name, params) in enumerate(EDGE_PARAMS)]
    return cases


def test_every_activation_has_a_torch_oracle() -> None:
    assert set(TORCH) == set(ACTIVATIONS)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_compiled_equals_torch(kind: ActivationKind, training: bool) -> None:
    spec = one_layer(kind, kind.example)
    params = spec.layers[0].params()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4, *kind.sample_shape, generator=gen) * 4
    # Put inputs exactly on every parameter value, where > and >= part ways.
    edges = [float(v) for v in params.values() if isinstance(v, float)]
    x.view(-1)[: 2 * len(edges)] = torch.tensor(edges + [-v for v in edges])
    module_factory, function = TORCH[kind.name]

    def run(f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        torch.manual_seed(0)  # rrelu draws its slopes while training
        with torch.no_grad():
            return f(x)

    expected = run(lambda v: function(v, params, training))
    for style in ("sequential", "functional"):
        model = compile_spec(spec, style, device="cpu").train(training)
        assert torch.equal(run(model), expected), style
    if module_factory is not None:
        assert torch.equal(run(module_factory(params).train(training)), expected)


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def bound_cases() -> list[Any]:
    cases = []
    for kind in KINDS:
        for name, m in bounds(kind):
            integer = LAYER_MODELS[kind.name].model_fields[name].annotation is int
            delta = 1 if integer else 0.5
            if isinstance(m, annotated_types.Ge):
                bad, op, word, bound = m.ge - delta, ">=", "greater_than_equal", m.ge
            elif isinstance(m, annotated_types.Gt):
                bad, op, word, bound = m.gt, ">", "greater_than", m.gt
            elif isinstance(m, annotated_types.Le):
                bad, op, word, bound = m.le + delta, "<=", "less_than_equal", m.le
            else:
                bad, op, word, bound = m.lt, "<", "less_than", m.lt
            bad = bad if integer else float(bad)
            message = f"must be {op} {_show(bound)}, got {_show(bad)}"
            cases.append(pytest.param(kind, name, bad, message, word, id=f"{kind.name}.{name}{op}{bound}"))
    return cases


def test_bounded_parameters_are_found() -> None:
    """The bound cases come from pydantic metadata: make sure that reading still finds them."""
    found = {(case.values[0].name, case.values[1]) for case in bound_cases()}
    assert {("leaky_relu", "negative_slope"), ("celu", "alpha"), ("prelu", "num_parameters"), ("softplus", "beta")} <= found


@pytest.mark.parametrize(("kind", "param", "bad", "message", "error_type"), bound_cases())
def test_out_of_range_parameter_is_rejected_with_its_path(kind: ActivationKind, param: str, bad: Any, message: str, error_type: str) -> None:
    layer = {**kind.example, "type": kind.name, param: bad}
    with pytest.raises(SpecError) as info:
        parse_spec({"input_shape": list(kind.sample_shape), "layers": [layer]})
    assert info.value.errors() == [{"path": f"layers[0].{param}", "message": message, "type": error_type}]
    # The same parameter given through a layer's activation shorthand.
    with pytest.raises(SpecError) as info:
        parse_spec({"input_shape": [4], "layers": [{"type": "linear", "out_features": 6, "activation": layer}]})
    assert info.value.errors() == [{"path": f"layers[0].activation.{param}", "message": message, "type": error_type}]


def spellings(kind: ActivationKind) -> list[str]:
    torch_class = kind.module.rpartition(".")[2]
    names = [kind.name, kind.name.replace("_", ""), torch_class, *kind.aliases]
    return sorted({v for name in names for v in (name, name.lower(), name.upper(), name.swapcase())})


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_every_alias_and_torch_class_name_resolves(kind: ActivationKind) -> None:
    for name in spellings(kind):
        assert lookup_type(name) == kind.name, name
        spec = parse_spec(
            {
                "input_shape": list(kind.sample_shape),
                "layers": [
                    {**kind.example, "type": name},
                    {"type": "linear", "out_features": 4, "activation": {**kind.example, "type": name}},
                ],
            }
        )
        assert (spec.layers[0].type, spec.layers[1].activation.type) == (kind.name, kind.name), name


def test_torch_class_names_in_any_case_examples() -> None:
    assert [lookup_type(n) for n in ("LeakyReLU", "leakyrelu", "LEAKY_RELU", "SiLU", "swish", "Heaviside", "LogSoftmax")] == [
        "leaky_relu", "leaky_relu", "leaky_relu", "silu", "silu", "step", "log_softmax",
    ]


def flat_grid(params: P) -> torch.Tensor:
    """A dense float64 grid over [-30, 30], every quarter exactly, and every parameter value and its negative."""
    values = [float(v) for v in params.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    extra = torch.tensor(values + [-v for v in values], dtype=torch.float64)
    quarters = torch.arange(-120, 121, dtype=torch.float64) / 4
    return torch.cat([torch.linspace(-30, 30, 6001, dtype=torch.float64), quarters, extra])


def columns(grid: torch.Tensor, width: int) -> torch.Tensor:
    """``[G, width]``: the grid, and scaled and shifted copies so softmax-like rows vary."""
    return torch.stack([grid * (1 - 0.4 * j) + (j % 3) for j in range(width)], 1)


FLAT = [case for case in variants() if case.values[0].flat is not None]


@pytest.mark.parametrize(("kind", "params"), FLAT)
def test_flat_region_is_where_the_derivative_is_below_one_percent(kind: ActivationKind, params: dict[str, Any]) -> None:
    spec = one_layer(kind, params, (3,))
    model = compile_spec(spec, device="cpu", dtype="float64").eval()
    p = spec.layers[0].params()
    x = columns(flat_grid(p), 3).requires_grad_(True)
    y = model(x)
    # Row i of each sample's Jacobian: dy_i / dx_j for every j (zero off the diagonal when element-wise).
    jacobian = torch.stack([torch.autograd.grad(y[:, i].sum(), x, retain_graph=True)[0] for i in range(3)], 1)
    largest = jacobian.abs().max()
    flat = kind.flat.where(x.detach(), y.detach(), p)
    assert flat.shape == y.shape and flat.dtype == torch.bool
    steep = flat & (jacobian.abs().amax(2) > 0.01 * largest)
    assert not steep.any(), f"{kind.flat.text!r} claims flat where |dy/dx| > 1% of {largest.item():.4g}: x = {x.detach()[steep][:5].tolist()}"


DTYPES = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}
"""Float dtypes and the integer of the same width, to step a value to its neighbours in that dtype."""


def interval_grid(bounds: FlatBounds, dtype: torch.dtype) -> torch.Tensor:
    """Each finite bound as the dtype holds it and its four neighbours either side, signed zeros and
    the smallest subnormals, +-inf, NaN, and a spread of ordinary values, all of ``dtype``."""
    finite = [b for b in (bounds.lo, bounds.hi) if math.isfinite(b)]
    steps = torch.arange(-4, 5, dtype=DTYPES[dtype])
    near = (torch.tensor(finite, dtype=dtype).view(DTYPES[dtype])[:, None] + steps).view(dtype).flatten()
    tiny = torch.tensor([1], dtype=DTYPES[dtype]).view(dtype)
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan], dtype=dtype)
    spread = torch.linspace(-40, 40, 321, dtype=torch.float64).to(dtype)
    return torch.cat([near, tiny, -tiny, special, spread])


def holds_by_the_letter(bounds: FlatBounds, value: float, dtype: torch.dtype) -> bool:
    """``FlatBounds``' contract, one Python comparison at a time: inside ``lo < x < hi``, else
    ``x < lo or x > hi``, a closed end's ``<`` made ``<=``, the bounds rounded to ``dtype``, NaN never."""
    lo, hi = (torch.tensor(b, dtype=dtype).item() for b in (bounds.lo, bounds.hi))
    if math.isnan(value):
        return False
    if bounds.inside:
        return (lo <= value if bounds.lo_closed else lo < value) and (value <= hi if bounds.hi_closed else value < hi)
    return (value <= lo if bounds.lo_closed else value < lo) or (value >= hi if bounds.hi_closed else value > hi)


def assert_mask_by_the_letter(bounds: FlatBounds, x: torch.Tensor, flat: torch.Tensor) -> None:
    """``flat`` is a bool mask of ``x`` equal to ``holds_by_the_letter`` at every element."""
    assert flat.dtype == torch.bool and flat.shape == x.shape
    expected = [holds_by_the_letter(bounds, value, x.dtype) for value in x.tolist()]
    wrong = [value for value, got, want in zip(x.tolist(), flat.tolist(), expected) if got != want]
    assert not wrong, f"{bounds}: mask wrong at x = {wrong[:8]}"


# Intervals no entry has today, so that every branch of FlatBounds.holds is held to the contract.
UNUSUAL_BOUNDS = [
    FlatBounds(-math.inf, math.inf, lo_closed=True, hi_closed=True),
    FlatBounds(-math.inf, 1.5),
    FlatBounds(-1.5, math.inf),
    FlatBounds(0.75, 0.75, lo_closed=True, hi_closed=True),
    FlatBounds.outside(-math.inf, math.inf, closed=True),
    FlatBounds.above(2.0, closed=True),
    NO_FLAT,
]


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda dtype: str(dtype).removeprefix("torch."))
@pytest.mark.parametrize("bounds", UNUSUAL_BOUNDS, ids=str)
def test_flat_bounds_hold_by_the_letter_beyond_the_registry(bounds: FlatBounds, dtype: torch.dtype) -> None:
    x = interval_grid(bounds, dtype)
    assert_mask_by_the_letter(bounds, x, bounds.holds(x))


FLAT_BY_BOUNDS = [case for case in FLAT if case.values[0].flat.bounds is not None]
@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda dtype: str(dtype).removeprefix("torch."))
@pytest.mark.parametrize(("kind", "params"), FLAT_BY_BOUNDS)
def test_flat_mask_from_bounds_is_the_interval_at_every_end(kind: ActivationKind, params: dict[str, Any], dtype: torch.dtype) -> None:
    """A region given by bounds masks exactly the elements its interval says, at the ends
    themselves and their neighbours in each dtype, at +-inf and NaN."""
    p = one_layer(kind, params, (1,)).layers[0].params()
    bounds = kind.flat.bounds_for(p)
    assert bounds is not None
    x = interval_grid(bounds, dtype)
    assert_mask_by_the_letter(bounds, x, kind.flat.where(x, x, p))


def test_flat_region_takes_exactly_one_of_bounds_and_mask() -> None:
    with pytest.raises(TypeError, match="'x < 0': give exactly one of bounds and mask"):
        FlatRegion("x < 0")
    with pytest.raises(TypeError, match="exactly one"):
        FlatRegion("x < 0", FlatBounds.below(0.0), mask=lambda x, y, p: x < 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("kind", "params"), variants())
def test_output_range_contains_every_output(kind: ActivationKind, params: dict[str, Any], dtype: torch.dtype) -> None:
    spec = one_layer(kind, params)
    model = compile_spec(spec, device="cpu", dtype=dtype).eval()
    grid = torch.cat([torch.linspace(-1e4, 1e4, 2001, dtype=dtype), torch.linspace(-20, 20, 8001, dtype=dtype)])
    with torch.no_grad():
        y = model(columns(grid, kind.sample_shape[0]))
    low, high = kind.range_for(spec.layers[0].params())
    assert low <= high
    assert y.min().item() >= low and y.max().item() <= high, (y.min().item(), y.max().item(), (low, high))


def test_parameter_dependent_ranges() -> None:
    assert ACTIVATIONS["hardtanh"].range_for({"min_val": -2.0, "max_val": 3.0}) == (-2.0, 3.0)
    assert ACTIVATIONS["elu"].range_for({"alpha": 0.5}) == (-0.5, math.inf)
    assert ACTIVATIONS["softplus"].range_for({"beta": 2.0, "threshold": -4.0}) == (-2.0, math.inf)
    assert ACTIVATIONS["sigmoid"].range_for({}) == (0.0, 1.0)


# --- step -----------------------------------------------------------------------------------


X = torch.tensor([-2.0, -0.5, 0.0, 0.25, 0.5, 0.75, 3.0])


@pytest.mark.parametrize("threshold", [0.0, 0.5, -1.0])
def test_step_forward_is_one_at_and_above_threshold(threshold: float) -> None:
    assert torch.equal(step(X, threshold), (X >= threshold).float())
    assert step(X.double(), threshold).dtype == torch.float64


def test_step_forward_values() -> None:
    assert step(X, 0.5).tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(("surrogate", "expected"), [("none", [0.0] * 7), ("ste", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])])
def test_step_gradient(surrogate: str, expected: list[float]) -> None:
    x = X.clone().requires_grad_(True)
    upstream = torch.arange(1.0, 8.0)
    (step(x, 0.5, surrogate) * upstream).sum().backward()
    assert x.grad.tolist() == expected


@pytest.mark.parametrize("style", ["sequential", "functional"])
@pytest.mark.parametrize(("surrogate", "grad"), [("none", 0.0), ("ste", 1.0)])
def test_compiled_step_backward_never_raises(style: str, surrogate: str, grad: float) -> None:
    spec = parse_spec({"input_shape": [7], "layers": [{"type": "heaviside", "threshold": 0.5, "surrogate": surrogate}]})
    x = X.unsqueeze(0).requires_grad_(True)
    y = compile_spec(spec, style, device="cpu")(x)
    y.sum().backward()
    assert y.tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]
    assert x.grad.tolist() == [[grad] * 7]

