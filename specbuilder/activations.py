"""The activation registry: every ``torch.nn`` activation, plus ``identity`` and ``step``.

Each entry is the one place an activation is described. The spec language, the compiler (both
styles), the code generator, the statistics (output range, flat region), ``ListActivations``
and the docs all read it; tests parametrize over it.

Flat regions follow one rule: where the derivative is below 1% of its maximum. That is where a
unit stops passing gradient back (a dead ReLU, a saturated sigmoid).

Estimated cost (``Inferred.macs``): one multiply-add per element, the default, except identity
(0: it passes its input through), the softmax-like kinds (``SOFTMAX_MACS_PER_ELEMENT``) and glu
(one per input element: a sigmoid of one half, a product with the other).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from specbuilder.kinds import (
    NO_FLAT, PASS_THROUGH, ActivationKind, FlatBounds, FlatRegion, Inferred, LayerError, Shape, check_dim, same_shape,
)

F = "torch.nn.functional."
NN = "torch.nn."
INF = math.inf
SOFTMAX_MACS_PER_ELEMENT = 3
"""Softmax, log_softmax and softmin pass over each element three times: for the maximum, for the sum
of exponentials, and to normalize."""




def _identity(params: Mapping[str, Any], shape: Shape) -> Inferred:
    return Inferred(shape, dict(params), macs=0)


def _softmax_like(params: Mapping[str, Any], shape: Shape) -> Inferred:
    check_dim(params["dim"], shape)
    return Inferred(shape, dict(params), macs=SOFTMAX_MACS_PER_ELEMENT * math.prod(shape))


def _glu(params: Mapping[str, Any], shape: Shape) -> Inferred:
    dim = check_dim(params["dim"], shape)
    if dim == 0:
        raise LayerError("cannot split the batch dimension; pick a feature dimension", "dim")
    size = shape[dim - 1]
    if size % 2:
        raise LayerError(f"glu halves dimension {params['dim']}, which has odd size {size}", "dim")
    out = list(shape)
    out[dim - 1] = size // 2
    return Inferred(tuple(out), dict(params), macs=math.prod(shape))


def _prelu(params: Mapping[str, Any], shape: Shape) -> Inferred:
    n = params["num_parameters"]
    if n not in (1, shape[0]):
        raise LayerError(f"must be 1 or the number of channels ({shape[0]}), got {n}", "num_parameters")
    return Inferred(shape, dict(params), num_params=n)


def _hardtanh(params: Mapping[str, Any], shape: Shape) -> Inferred:
    if params["min_val"] >= params["max_val"]:
        raise LayerError(f"must be > min_val ({params['min_val']}), got {params['max_val']}", "max_val")
    return same_shape(params, shape)


def _rrelu(params: Mapping[str, Any], shape: Shape) -> Inferred:
    if params["lower"] > params["upper"]:
        raise LayerError(f"must be >= lower ({params['lower']}), got {params['upper']}", "upper")
    return same_shape(params, shape)


def _elu_bounds(p: Mapping[str, Any]) -> FlatBounds:
    if p["alpha"] > 0:
        return FlatBounds.below(math.log(0.01 * max(1.0, p["alpha"]) / p["alpha"]))
    return FlatBounds.below(0.0, closed=True)


def _within_lambd(p: Mapping[str, Any]) -> FlatBounds:
    return FlatBounds(-p["lambd"], p["lambd"], lo_closed=True, hi_closed=True)


def _step_flat(x: Any, y: Any, params: Mapping[str, Any]) -> Any:
    """A mask: everywhere with surrogate 'none', NaN included (no gradient passes anywhere, and an
    interval never holds NaN); nowhere with 'ste'."""
    everywhere = (x != x) | (x == x)
    return everywhere if params["surrogate"] == "none" else ~everywhere


def _saturated_probability(x: Any, y: Any, params: Mapping[str, Any]) -> Any:
    """A mask: where probability ``y`` is within 0.25% of 0 or 1. The region is one of the output
    (a probability of the whole row), no interval of x."""
    return y * (1 - y) < 0.0025


Dim = Field(-1, description="dimension of the batched input the operation runs along")
NonNegative = Field(ge=0)


def _kinds() -> list[ActivationKind]:
    return [
        ActivationKind(
            name="identity", summary="Passes its input through unchanged: a network of these is one linear map.",
            params={}, module=NN + "Identity", functional=PASS_THROUGH, infer=_identity, formula="x",
            flat=None,
        ),
        ActivationKind(
            name="relu", summary="Rectified linear unit.", params={}, module=NN + "ReLU", functional=F + "relu",
            formula="max(0, x)", output_range=(0.0, INF),
            flat=FlatRegion("x <= 0", FlatBounds.below(0.0, closed=True, of_output=True)),
        ),
        ActivationKind(
            name="relu6", summary="ReLU capped at 6.", params={}, module=NN + "ReLU6", functional=F + "relu6",
            formula="min(max(0, x), 6)", output_range=(0.0, 6.0),
            flat=FlatRegion("x <= 0 or x >= 6", FlatBounds.outside(0.0, 6.0, closed=True, of_output=True)),
        ),
        ActivationKind(
            name="leaky_relu", summary="ReLU with a small slope for negative inputs, so units cannot die.",
            params={"negative_slope": (float, Field(0.01, ge=0))},
            module=NN + "LeakyReLU", functional=F + "leaky_relu", positional=("negative_slope",),
            formula="max(0, x) + negative_slope * min(0, x)", example={"negative_slope": 0.2},
            flat=FlatRegion(
                "x < 0 when negative_slope < 0.01",
                lambda p: FlatBounds.below(0.0) if p["negative_slope"] < 0.01 else NO_FLAT,
            ),
        ),
        ActivationKind(
            name="prelu", summary="Leaky ReLU whose negative slope is learned (one per channel or shared).",
            params={"num_parameters": (int, Field(1, ge=1)), "init": (float, 0.25)},
            module=NN + "PReLU", infer=_prelu, formula="max(0, x) + weight * min(0, x)",
            example={"init": 0.1}, flat=None,
        ),
        ActivationKind(
            name="rrelu", summary="Leaky ReLU with a random slope in [lower, upper] while training, their mean in eval.",
            params={"lower": (float, Field(1 / 8, ge=0)), "upper": (float, Field(1 / 3, ge=0))},
            module=NN + "RReLU", functional=F + "rrelu", passes_training=True, infer=_rrelu,
            formula="x if x >= 0 else a * x, a ~ U(lower, upper) (training) or (lower + upper) / 2 (eval)",
            example={"lower": 0.1, "upper": 0.2},
            flat=FlatRegion("x < 0 when upper < 0.01", lambda p: FlatBounds.below(0.0) if p["upper"] < 0.01 else NO_FLAT),
        ),
        ActivationKind(
            name="elu", summary="Exponential linear unit.", params={"alpha": (float, Field(1.0, ge=0))},
            module=NN + "ELU", functional=F + "elu", positional=("alpha",),
            formula="x if x > 0 else alpha * (exp(x) - 1)", range_fn=lambda p: (-p["alpha"], INF),
            example={"alpha": 0.5},
            flat=FlatRegion("x < ln(0.01 * max(1, alpha) / alpha); x <= 0 when alpha is 0", _elu_bounds),
        ),
        ActivationKind(
            name="selu", summary="Scaled ELU with self-normalizing constants.", params={},
            module=NN + "SELU", functional=F + "selu",
            formula="1.0507 * (x if x > 0 else 1.67326 * (exp(x) - 1))", output_range=(-1.0507009873554805 * 1.6732632423543772, INF),
            flat=FlatRegion("x < ln(0.01)", FlatBounds.below(math.log(0.01))),
        ),
        ActivationKind(
            name="celu", summary="Continuously differentiable ELU.", params={"alpha": (float, Field(1.0, gt=0))},
            module=NN + "CELU", functional=F + "celu", positional=("alpha",),
            formula="max(0, x) + min(0, alpha * (exp(x / alpha) - 1))", range_fn=lambda p: (-p["alpha"], INF),
            example={"alpha": 2.0},
            flat=FlatRegion("x < alpha * ln(0.01)", lambda p: FlatBounds.below(p["alpha"] * math.log(0.01))),
        ),
        ActivationKind(
            name="gelu", summary="Gaussian error linear unit.",
            params={"approximate": (Literal["none", "tanh"], "none")},
            module=NN + "GELU", functional=F + "gelu",
            formula="x * Phi(x)  (tanh form: 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))))",
            output_range=(-0.1701, INF), example={"approximate": "tanh"},
            flat=FlatRegion("x < -3.2 (the vanishing negative tail)", FlatBounds.below(-3.2)),
        ),
        ActivationKind(
            name="silu", summary="Sigmoid-weighted linear unit (swish).", params={}, aliases=("swish",),
            module=NN + "SiLU", functional=F + "silu", formula="x * sigmoid(x)", output_range=(-0.2785, INF),
            flat=FlatRegion("x < -6.5 (the vanishing negative tail)", FlatBounds.below(-6.5)),
        ),
        ActivationKind(
            name="mish", summary="Self-regularized non-monotonic activation.", params={},
            module=NN + "Mish", functional=F + "mish", formula="x * tanh(softplus(x))", output_range=(-0.3089, INF),
            flat=FlatRegion("x < -6.5 (the vanishing negative tail)", FlatBounds.below(-6.5)),
        ),
        ActivationKind(
            name="sigmoid", summary="Logistic function: squashes to (0, 1) and saturates at both ends.", params={},
            aliases=("logistic",), module=NN + "Sigmoid", functional="torch.sigmoid",
            formula="1 / (1 + exp(-x))", output_range=(0.0, 1.0),
            flat=FlatRegion("|x| > 6 (sigmoid' < 1% of its peak 0.25)", FlatBounds.outside(-6.0, 6.0)),
        ),
        ActivationKind(
            name="hardsigmoid", summary="Piecewise-linear sigmoid.", params={},
            module=NN + "Hardsigmoid", functional=F + "hardsigmoid", formula="relu6(x + 3) / 6",
            output_range=(0.0, 1.0),
            flat=FlatRegion("|x| >= 3", FlatBounds.outside(-3.0, 3.0, closed=True)),
        ),
        ActivationKind(
            name="logsigmoid", summary="Logarithm of the sigmoid.", params={},
            module=NN + "LogSigmoid", functional=F + "logsigmoid", formula="log(1 / (1 + exp(-x)))",
            output_range=(-INF, 0.0), flat=FlatRegion("x > 4.6", FlatBounds.above(4.6)),
        ),
        ActivationKind(
            name="tanh", summary="Hyperbolic tangent: zero-centred, saturates at -1 and 1.", params={},
            module=NN + "Tanh", functional="torch.tanh", formula="(exp(x) - exp(-x)) / (exp(x) + exp(-x))",
            output_range=(-1.0, 1.0),
            flat=FlatRegion("|x| > 3 (tanh' < 1% of its peak 1)", FlatBounds.outside(-3.0, 3.0)),
        ),
        ActivationKind(
            name="hardtanh", summary="Clamp to [min_val, max_val].",
            params={"min_val": (float, -1.0), "max_val": (float, 1.0)},
            module=NN + "Hardtanh", functional=F + "hardtanh", infer=_hardtanh, positional=("min_val", "max_val"),
            formula="min(max(x, min_val), max_val)", range_fn=lambda p: (p["min_val"], p["max_val"]),
            example={"min_val": -2.0, "max_val": 2.0},
            flat=FlatRegion(
                "x <= min_val or x >= max_val",
                lambda p: FlatBounds.outside(p["min_val"], p["max_val"], closed=True, of_output=True),
            ),
        ),
        ActivationKind(
            name="hardswish", summary="Piecewise approximation of swish.", params={},
            module=NN + "Hardswish", functional=F + "hardswish", formula="x * relu6(x + 3) / 6",
            output_range=(-0.375, INF),
            flat=FlatRegion("x <= -3", FlatBounds.below(-3.0, closed=True)),
        ),
        ActivationKind(
            name="softplus", summary="Smooth ReLU; linear above threshold / beta.",
            params={"beta": (float, Field(1.0, gt=0)), "threshold": (float, 20.0)},
            module=NN + "Softplus", functional=F + "softplus", formula="log(1 + exp(beta * x)) / beta",
            range_fn=lambda p: (min(0.0, p["threshold"] / p["beta"]), INF), example={"beta": 2.0, "threshold": 10.0},
            # A mask: beta * x is rounded in the tensor's dtype, so its edge in x moves with the dtype: no one interval.
            flat=FlatRegion(
                "beta * x < -4.6 and beta * x <= threshold (above threshold it is linear)",
                mask=lambda x, y, p: (p["beta"] * x < -4.6) & (p["beta"] * x <= p["threshold"]),
            ),
        ),
        ActivationKind(
            name="softsign", summary="x / (1 + |x|): a gentler tanh.", params={},
            module=NN + "Softsign", functional=F + "softsign", formula="x / (1 + |x|)", output_range=(-1.0, 1.0),
            flat=FlatRegion("|x| > 9", FlatBounds.outside(-9.0, 9.0)),
        ),
        ActivationKind(
            name="softshrink", summary="Soft thresholding toward zero.", params={"lambd": (float, Field(0.5, ge=0))},
            module=NN + "Softshrink", functional=F + "softshrink", positional=("lambd",),
            formula="x - lambd if x > lambd, x + lambd if x < -lambd, else 0", example={"lambd": 0.25},
            flat=FlatRegion("|x| <= lambd", _within_lambd),
        ),
        ActivationKind(
            name="hardshrink", summary="Hard thresholding: zero inside [-lambd, lambd].",
            params={"lambd": (float, Field(0.5, ge=0))}, module=NN + "Hardshrink", functional=F + "hardshrink",
            positional=("lambd",), formula="x if |x| > lambd else 0", example={"lambd": 0.25},
            flat=FlatRegion("|x| <= lambd", _within_lambd),
        ),
        ActivationKind(
            name="tanhshrink", summary="x - tanh(x).", params={}, module=NN + "Tanhshrink",
            functional=F + "tanhshrink", formula="x - tanh(x)",
            flat=FlatRegion("|x| < 0.1", FlatBounds(-0.1, 0.1)),
        ),
        ActivationKind(
            name="threshold", summary="Replaces values not above threshold with value.",
            params={"threshold": (float, ...), "value": (float, ...)},
            module=NN + "Threshold", functional=F + "threshold", positional=("threshold", "value"),
            formula="x if x > threshold else value", example={"threshold": 0.1, "value": -1.0},
            flat=FlatRegion("x <= threshold", lambda p: FlatBounds.below(p["threshold"], closed=True)),
        ),
        ActivationKind(
            name="softmax", summary="Normalized exponentials along dim: a probability distribution.",
            params={"dim": (int, Dim)}, module=NN + "Softmax", functional=F + "softmax", positional=("dim",),
            infer=_softmax_like, formula="exp(x_i) / sum_j exp(x_j)", output_range=(0.0, 1.0), probability=True,
            example={"dim": 1},
            flat=FlatRegion("p(1 - p) < 0.0025 (p within 0.25% of 0 or 1)", mask=_saturated_probability),
        ),
        ActivationKind(
            name="log_softmax", summary="Logarithm of softmax, computed stably.",
            params={"dim": (int, Dim)}, module=NN + "LogSoftmax", functional=F + "log_softmax",
            positional=("dim",), infer=_softmax_like, formula="x_i - log(sum_j exp(x_j))",
            output_range=(-INF, 0.0), probability=True, example={"dim": 1},
            # A mask: the region is one of the output (a log-probability), no interval of x.
            flat=FlatRegion("p > 0.99", mask=lambda x, y, p: y > math.log(0.99)),
        ),
        ActivationKind(
            name="softmin", summary="Softmax of -x.", params={"dim": (int, Dim)}, module=NN + "Softmin",
            functional=F + "softmin", positional=("dim",), infer=_softmax_like,
            formula="exp(-x_i) / sum_j exp(-x_j)", output_range=(0.0, 1.0), probability=True, example={"dim": 1},
            flat=FlatRegion("p(1 - p) < 0.0025", mask=_saturated_probability),
        ),
        ActivationKind(
            name="glu", summary="Gated linear unit: splits dim in halves a, b and returns a * sigmoid(b).",
            params={"dim": (int, Dim)}, module=NN + "GLU", functional=F + "glu", positional=("dim",),
            infer=_glu, formula="a * sigmoid(b), (a, b) = split(x, 2, dim)", example={"dim": 1}, flat=None,
        ),
        ActivationKind(
            name="step", summary="Binary step (Heaviside). Its true gradient is zero; 'ste' passes it straight through.",
            params={"threshold": (float, 0.0), "surrogate": (Literal["none", "ste"], "none")},
            aliases=("heaviside", "binary_step"), module="specbuilder.torch_ops.Step",
            functional="specbuilder.torch_ops.step", positional=("threshold",),
            formula="1 if x >= threshold else 0", output_range=(0.0, 1.0),
            example={"threshold": 0.5, "surrogate": "ste"},
            flat=FlatRegion("everywhere with surrogate 'none'; nowhere with 'ste'", mask=_step_flat),
        ),
    ]


ACTIVATIONS: dict[str, ActivationKind] = {kind.name: kind for kind in _kinds()}
"""Canonical name -> entry, in documentation order."""
