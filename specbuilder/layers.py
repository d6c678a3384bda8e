"""The layer registry: the non-activation layers a spec may stack, with shape inference.

Parameter names are PyTorch's own. Sizes that follow from the input (``in_features``,
``in_channels``, ``num_features``) are inferred; a given value must agree. Shapes are per
sample: ``[C, H, W]`` for images, ``[C, L]`` for sequences, ``[F]`` for features.

Estimated multiply-adds per sample (``Inferred.macs``): linear, ``prod(in_shape[:-1]) *
in_features * out_features``; convolution, ``prod(out_shape) * in_channels / groups *
prod(kernel_size)``; pooling, ``prod(out_shape) * prod(kernel_size)`` (a compare or an add per
window element); adaptive pooling, ``prod(in_shape)`` (about one read per input element);
normalization, ``NORM_MACS_PER_ELEMENT`` per element; flatten and unflatten, 0 (views: no
arithmetic); dropout, one per element (a mask and a multiply while training).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, PlainValidator
from pydantic_core import PydanticCustomError

from specbuilder.kinds import Inferred, LayerError, LayerKind, Shape, check_dim, same_shape

NN = "torch.nn."
F = "torch.nn.functional."

MAX_SIZE = 2**31 - 1
PositiveInt = Annotated[int, Field(ge=1, le=MAX_SIZE)]
Probability = Annotated[float, Field(ge=0, le=1)]
NORM_MACS_PER_ELEMENT = 4
"""Estimated multiply-adds per element of batch and layer normalization: one each for the mean and
the variance (batch norm reads its running ones in evaluation; counted anyway), one to normalize,
one for the affine map (counted whether or not the layer has one)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or_pair(minimum: int, words: tuple[str, ...] = ()) -> Any:
    """An int, or a list of two ints, each >= ``minimum`` (or one of ``words``): torch's ``_pair``."""

    def check(value: Any) -> int | list[int] | str:
        if isinstance(value, str) and value in words:
            return value
        items = value if isinstance(value, list) else [value]
        if (len(items) == 2 or not isinstance(value, list)) and all(_is_int(v) for v in items):
            if min(items) < minimum:
                raise PydanticCustomError("greater_than_equal", "must be >= {ge}, got {value}", {"ge": minimum, "value": value})
            if max(items) > MAX_SIZE:
                raise PydanticCustomError("less_than_equal", "must be <= {le}, got {value}", {"le": MAX_SIZE, "value": value})
            return value
        allowed = f"an integer >= {minimum} or a list of two" + (f", or one of {', '.join(map(repr, words))}" if words else "")
        raise PydanticCustomError("int_or_pair", "must be {allowed}, got {got}", {"allowed": allowed, "got": repr(value)})

    schema: dict[str, Any] = {
        "anyOf": [
            {"type": "integer", "minimum": minimum, "maximum": MAX_SIZE},
            {"type": "array", "items": {"type": "integer", "minimum": minimum, "maximum": MAX_SIZE}, "minItems": 2, "maxItems": 2},
        ]
        + ([{"enum": list(words)}] if words else [])
    }
    return Annotated[Any, PlainValidator(check, json_schema_input_type=Any), Field(json_schema_extra=schema)]


IntOrPair = _int_or_pair(1)
Padding = _int_or_pair(0, ("same", "valid"))
PoolPadding = _int_or_pair(0)


def _pair(value: int | list[int], n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, list) else (value,) * n


def _need_rank(kind: str, shape: Shape, ranks: tuple[int, ...], layout: str) -> None:
    if len(shape) not in ranks:
        raise LayerError(
            f"{kind} needs a per-sample input shaped {layout}, got [{', '.join(map(str, shape))}]; "
            "set input_shape or add an unflatten layer before it"
        )


def _infer_size(params: Mapping[str, Any], name: str, actual: int, what: str) -> int:
    given = params.get(name)
    if given is not None and given != actual:
        raise LayerError(f"the input has {actual} {what}, got {given}; drop {name} to infer it", name)
    return actual


def _linear(params: Mapping[str, Any], shape: Shape) -> Inferred:
    n_in = _infer_size(params, "in_features", shape[-1], "features (its last dimension)")
    n_out = params["out_features"]
    kwargs = {"in_features": n_in, "out_features": n_out, "bias": params["bias"]}
    num_params = n_in * n_out + (n_out if params["bias"] else 0)
    return Inferred((*shape[:-1], n_out), kwargs, num_params, macs=math.prod(shape[:-1]) * n_in * n_out)


def _window_out(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool, field: str, what: str) -> int:
    span = dilation * (kernel - 1) + 1
    room = size + 2 * pad - span
    if room < 0:
        raise LayerError(
            f"kernel of extent {span} is larger than the {what} input size {size}"
            + (f" padded to {size + 2 * pad}" if pad else ""),
            field,
        )
    out = (-(-room // stride) if ceil else room // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _conv(n: int):
    layout = "[C, L]" if n == 1 else "[C, H, W]"

    def infer(params: Mapping[str, Any], shape: Shape) -> Inferred:
        _need_rank(f"conv{n}d", shape, (n + 1,), layout)
        c_in = _infer_size(params, "in_channels", shape[0], "channels (its first dimension)")
        c_out, groups = params["out_channels"], params["groups"]
        if c_in % groups or c_out % groups:
            raise LayerError(f"must divide in_channels ({c_in}) and out_channels ({c_out}), got {groups}", "groups")
        kernel, stride, dilation = (_pair(params[k], n) for k in ("kernel_size", "stride", "dilation"))
        padding = params["padding"]
        if padding == "same" and any(s != 1 for s in stride):
            raise LayerError("padding 'same' needs stride 1", "padding")
        if isinstance(padding, str):
            spatial = shape[1:] if padding == "same" else tuple(
                _window_out(size, k, 1, 0, d, False, "kernel_size", "spatial") for size, k, d in zip(shape[1:], kernel, dilation)
            )
        else:
            pads = _pair(padding, n)
            spatial = tuple(
                _window_out(size, k, s, p, d, False, "kernel_size", "spatial")
                for size, k, s, p, d in zip(shape[1:], kernel, stride, pads, dilation)
            )
        kwargs = {key: params[key] for key in ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias")}
        kwargs = {"in_channels": c_in, **kwargs}
        weights = c_out * (c_in // groups) * math.prod(kernel)
        out_shape = (c_out, *spatial)
        macs = math.prod(out_shape) * (c_in // groups) * math.prod(kernel)
        return Inferred(out_shape, kwargs, weights + (c_out if params["bias"] else 0), macs=macs)

    return infer


def _pool(n: int, kind: str, dilated: bool):
    layout = "[C, L]" if n == 1 else "[C, H, W]"

    def infer(params: Mapping[str, Any], shape: Shape) -> Inferred:
        _need_rank(kind, shape, (n + 1,), layout)
        kernel = _pair(params["kernel_size"], n)
        stride = _pair(params["stride"], n) if params["stride"] is not None else kernel
        pads = _pair(params["padding"], n)
        dilation = _pair(params["dilation"], n) if dilated else (1,) * n
        for k, p in zip(kernel, pads):
            if p > k // 2:
                raise LayerError(f"must be at most half the kernel size ({k // 2}), got {p}", "padding")
        spatial = tuple(
            _window_out(size, k, s, p, d, params["ceil_mode"], "kernel_size", "spatial")
            for size, k, s, p, d in zip(shape[1:], kernel, stride, pads, dilation)
        )
        out_shape = (shape[0], *spatial)
        return Inferred(out_shape, dict(params), macs=math.prod(out_shape) * math.prod(kernel))

    return infer


def _adaptive(params: Mapping[str, Any], shape: Shape) -> Inferred:
    _need_rank("adaptive_avg_pool2d", shape, (3,), "[C, H, W]")
    return Inferred((shape[0], *_pair(params["output_size"], 2)), dict(params), macs=math.prod(shape))


def _batch_norm(n: int):
    ranks, layout = ((1, 2), "[C] or [C, L]") if n == 1 else ((3,), "[C, H, W]")

    def infer(params: Mapping[str, Any], shape: Shape) -> Inferred:
        _need_rank(f"batch_norm{n}d", shape, ranks, layout)
        c = _infer_size(params, "num_features", shape[0], "channels (its first dimension)")
        macs = NORM_MACS_PER_ELEMENT * math.prod(shape)
        return Inferred(shape, {**params, "num_features": c}, 2 * c if params["affine"] else 0, macs=macs)

    return infer


def _without_running_stats(params: Mapping[str, Any]) -> bool:
    """Batch norm evaluates with batch statistics when it keeps no running ones."""
    return not params["track_running_stats"]


def _layer_norm(params: Mapping[str, Any], shape: Shape) -> Inferred:
    given = params["normalized_shape"]
    normalized = list(given) if given is not None else [shape[-1]]
    if len(normalized) > len(shape) or list(shape[len(shape) - len(normalized):]) != normalized:
        raise LayerError(
            f"must equal the trailing dimensions of the input [{', '.join(map(str, shape))}], got {given}",
            "normalized_shape",
        )
    size = math.prod(normalized)
    affine = params["elementwise_affine"]
    count = (size if affine else 0) + (size if affine and params["bias"] else 0)
    return Inferred(shape, {**params, "normalized_shape": normalized}, count, macs=NORM_MACS_PER_ELEMENT * math.prod(shape))


def _flatten(params: Mapping[str, Any], shape: Shape) -> Inferred:
    start = check_dim(params["start_dim"], shape, "start_dim")
    end = check_dim(params["end_dim"], shape, "end_dim")
    if start == 0:
        raise LayerError("would flatten the batch dimension; must be >= 1", "start_dim")
    if end < start:
        raise LayerError(f"must not come before start_dim ({params['start_dim']}), got {params['end_dim']}", "end_dim")
    merged = math.prod(shape[start - 1 : end])
    return Inferred((*shape[: start - 1], merged, *shape[end:]), dict(params), macs=0)


def _unflatten(params: Mapping[str, Any], shape: Shape) -> Inferred:
    dim = check_dim(params["dim"], shape)
    if dim == 0:
        raise LayerError("would split the batch dimension; pick a feature dimension", "dim")
    sizes = list(params["unflattened_size"])
    size = shape[dim - 1]
    if sizes.count(-1) > 1 or any(s < 1 and s != -1 for s in sizes):
        raise LayerError(f"must be sizes >= 1 with at most one -1, got {sizes}", "unflattened_size")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if size % known:
            raise LayerError(f"cannot split dimension {params['dim']} of size {size} into {sizes}", "unflattened_size")
        sizes[sizes.index(-1)] = size // known
    elif known != size:
        raise LayerError(f"must multiply to {size}, the size of dimension {params['dim']}, got {sizes}", "unflattened_size")
    return Inferred((*shape[: dim - 1], *sizes, *shape[dim:]), dict(params), macs=0)


def _conv_params() -> dict[str, tuple[Any, Any]]:
    return {
        "out_channels": (PositiveInt, ...),
        "kernel_size": (IntOrPair, ...),
        "in_channels": (PositiveInt | None, None),
        "stride": (IntOrPair, 1),
        "padding": (Padding, 0),
        "dilation": (IntOrPair, 1),
        "groups": (PositiveInt, 1),
        "bias": (bool, True),
    }


def _pool_params(dilated: bool) -> dict[str, tuple[Any, Any]]:
    params: dict[str, tuple[Any, Any]] = {
        "kernel_size": (IntOrPair, ...),
        "stride": (IntOrPair | None, None),
        "padding": (PoolPadding, 0),
    }
    if dilated:
        params["dilation"] = (IntOrPair, 1)
    params["ceil_mode"] = (bool, False)
    return params


def _kinds() -> list[LayerKind]:
    norm = {
        "eps": (float, Field(1e-5, gt=0)),
        "momentum": (Probability, 0.1),
        "affine": (bool, True),
        "track_running_stats": (bool, True),
    }
    return [
        LayerKind(
            name="linear", summary="Affine map y = x W^T + b over the last dimension.",
            params={"out_features": (PositiveInt, ...), "in_features": (PositiveInt | None, None), "bias": (bool, True)},
            module=NN + "Linear", infer=_linear, inferred=("in_features",), positional=("out_features",), example={"out_features": 3, "bias": False},
        ),
        LayerKind(
            name="conv1d", sample_shape=(2, 8), summary="1-D convolution over [C, L] inputs.", params=_conv_params(), module=NN + "Conv1d",
            infer=_conv(1), inferred=("in_channels",), positional=("out_channels", "kernel_size"),
            example={"out_channels": 4, "kernel_size": 3, "padding": 1, "stride": 2},
        ),
        LayerKind(
            name="conv2d", sample_shape=(2, 6, 6), summary="2-D convolution over [C, H, W] inputs.", params=_conv_params(), module=NN + "Conv2d",
            infer=_conv(2), inferred=("in_channels",), positional=("out_channels", "kernel_size"),
            example={"out_channels": 4, "kernel_size": [3, 1], "padding": "same", "bias": False},
        ),
        LayerKind(
            name="max_pool1d", sample_shape=(2, 8), summary="Max over sliding windows of [C, L] inputs.", params=_pool_params(True),
            module=NN + "MaxPool1d", functional=F + "max_pool1d", infer=_pool(1, "max_pool1d", True),
            positional=("kernel_size",), example={"kernel_size": 2, "stride": 1, "ceil_mode": True},
        ),
        LayerKind(
            name="max_pool2d", sample_shape=(2, 6, 6), summary="Max over sliding windows of [C, H, W] inputs.", params=_pool_params(True),
            module=NN + "MaxPool2d", functional=F + "max_pool2d", infer=_pool(2, "max_pool2d", True),
            positional=("kernel_size",), example={"kernel_size": [2, 2], "padding": 1},
        ),
        LayerKind(
            name="avg_pool2d", sample_shape=(2, 6, 6), summary="Mean over sliding windows of [C, H, W] inputs.",
            params={**_pool_params(False), "count_include_pad": (bool, True)},
            module=NN + "AvgPool2d", functional=F + "avg_pool2d", infer=_pool(2, "avg_pool2d", False),
            positional=("kernel_size",), example={"kernel_size": 2, "count_include_pad": False},
        ),
        LayerKind(
            name="adaptive_avg_pool2d", sample_shape=(2, 6, 6), summary="Mean pooling to a fixed output size.",
            params={"output_size": (IntOrPair, ...)}, module=NN + "AdaptiveAvgPool2d",
            functional=F + "adaptive_avg_pool2d", infer=_adaptive, positional=("output_size",),
            example={"output_size": [1, 2]},
        ),
        LayerKind(
            name="batch_norm1d", sample_shape=(4, 5), summary="Batch normalization over [C] or [C, L] inputs.",
            params={"num_features": (PositiveInt | None, None), **norm}, module=NN + "BatchNorm1d",
            infer=_batch_norm(1), inferred=("num_features",), batch_statistics=_without_running_stats, example={"eps": 1e-3, "affine": False},
        ),
        LayerKind(
            name="batch_norm2d", sample_shape=(2, 6, 6), summary="Batch normalization over [C, H, W] inputs.",
            params={"num_features": (PositiveInt | None, None), **norm}, module=NN + "BatchNorm2d",
            infer=_batch_norm(2), inferred=("num_features",), batch_statistics=_without_running_stats, example={"momentum": 0.2, "track_running_stats": False},
        ),
        LayerKind(
            name="layer_norm", sample_shape=(3, 6), summary="Normalization over the trailing dimensions of each sample.",
            params={
                "normalized_shape": (Annotated[list[PositiveInt], Field(min_length=1)] | None, None),
                "eps": (float, Field(1e-5, gt=0)),
                "elementwise_affine": (bool, True),
                "bias": (bool, True),
            },
            module=NN + "LayerNorm", infer=_layer_norm, inferred=("normalized_shape",), example={"eps": 1e-6, "bias": False},
        ),
        LayerKind(
            name="dropout", summary="Zeroes elements with probability p while training.",
            params={"p": (Probability, 0.5)}, module=NN + "Dropout", functional=F + "dropout",
            passes_training=True, infer=same_shape, positional=("p",), example={"p": 0.25},
        ),
        LayerKind(
            name="flatten", sample_shape=(2, 3, 4), summary="Merges dimensions start_dim..end_dim of the batched input.",
            params={"start_dim": (int, 1), "end_dim": (int, -1)}, module=NN + "Flatten", functional="torch.flatten",
            infer=_flatten, example={"start_dim": 1, "end_dim": 2},
        ),
        LayerKind(
            name="unflatten", summary="Splits dimension dim of the batched input into unflattened_size.",
            params={"dim": (int, ...), "unflattened_size": (list[int], Field(min_length=1))},
            module=NN + "Unflatten", functional="torch.unflatten", functional_args={"unflattened_size": "sizes"},
            infer=_unflatten, positional=("dim", "unflattened_size"), example={"dim": 1, "unflattened_size": [2, -1]},
        ),
    ]


LAYERS: dict[str, LayerKind] = {kind.name: kind for kind in _kinds()}
"""Canonical name -> entry for every non-activation layer."""
