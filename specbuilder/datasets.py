"""Built-in datasets, and every form of training data turned into one ``Dataset``.

One registry (``DATASETS``) lists the toy problems activation tutorials use (spirals, moons,
circles, xor, blobs, sine) and one real one (8x8 digits). Each entry is a generator
``(n, seed, noise) -> (x float32, y int64 | float32)``, deterministic given the seed, with its
task, class count, natural per-sample input shape and a description; docs, ``train()`` and
the tests all read it. ``as_dataset`` accepts what ``train()`` accepts: a name, an ``.npz``
path (arrays ``x`` and ``y``, never unpickled), ``(x, y)`` arrays or tensors, or a ``Dataset``.
Only numpy is needed here, so light clients can list and generate datasets.
"""

from __future__ import annotations

import functools
import gzip
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from specbuilder.errors import suggest

Task = Literal["classification", "regression"]
Generator = Callable[[int, int, float], tuple[np.ndarray, np.ndarray]]


class DataError(ValueError):
    """Training data that cannot be used as given; the message says what to change."""


@dataclass(frozen=True)
class DatasetInfo:
    """One built-in dataset: how to generate it and what it is."""

    name: str
    generate: Generator
    """``(n, seed, noise) -> (x, y)``: float32 inputs, int64 labels or float32 targets."""
    task: Task
    classes: int | None
    """Number of classes; None for regression."""
    input_shape: tuple[int, ...]
    """The natural per-sample shape of ``x``."""
    description: str
    n: int
    """Default number of samples."""
    noise: float
    """Default noise level (its meaning is in ``description``)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Samples ready to train on: ``x`` is ``[N, *input_shape]``, ``y`` is ``[N]`` or ``[N, ...]``."""

    name: str
    x: np.ndarray
    y: np.ndarray
    task: Task
    classes: int | None = None

    def __len__(self) -> int:
        return len(self.x)


def _gaussian(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return rng.normal(0.0, scale, shape) if scale > 0 else np.zeros(shape)


def _pack(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


def _halves(n: int) -> np.ndarray:
    """Labels 0..1 for ``n`` samples, as balanced as ``n`` allows."""
    return (np.arange(n) >= (n + 1) // 2).astype(np.int64)


def spirals(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spiral arms of 1.75 turns; arm 1 is arm 0 rotated by half a turn."""
    rng = np.random.default_rng(seed)
    y = _halves(n)
    r = rng.uniform(0.05, 1.0, n)
    theta = 3.5 * math.pi * r + math.pi * y
    x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1) + _gaussian(rng, (n, 2), noise)
    return _pack(x, y)


def moons(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles (scikit-learn's ``make_moons``)."""
    rng = np.random.default_rng(seed)
    y = _halves(n)
    t = rng.uniform(0.0, math.pi, n)
    x = np.where(y[:, None] == 0, np.stack([np.cos(t), np.sin(t)], 1), np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
    return _pack(x + _gaussian(rng, (n, 2), noise), y)


def circles(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """A circle of radius 1 (class 0) around one of radius 0.5 (class 1)."""
    rng = np.random.default_rng(seed)
    y = _halves(n)
    t = rng.uniform(0.0, 2 * math.pi, n)
    r = np.where(y == 0, 1.0, 0.5)
    x = np.stack([r * np.cos(t), r * np.sin(t)], axis=1) + _gaussian(rng, (n, 2), noise)
    return _pack(x, y)


def xor(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Points in [-1, 1]^2, labelled 1 where the signs of the two coordinates differ."""
    rng = np.random.default_rng(seed)
    clean = rng.uniform(-1.0, 1.0, (n, 2))
    y = ((clean[:, 0] > 0) != (clean[:, 1] > 0)).astype(np.int64)
    return _pack(clean + _gaussian(rng, (n, 2), noise), y)


def blobs(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian blobs centred on a circle of radius 2; ``noise`` is their standard deviation."""
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int64) % 3
    angle = 2 * math.pi * y / 3
    centres = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return _pack(centres + _gaussian(rng, (n, 2), noise), y)


def sine(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Regression of y = sin(x) for x in [-pi, pi], plus Gaussian noise on y."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-math.pi, math.pi, (n, 1))
    y = np.sin(x[:, 0]) + _gaussian(rng, (n,), noise)
    return _pack(x, y.astype(np.float32))


DIGITS_ROWS = 1797


@functools.cache
def _digits_table() -> np.ndarray:
    """The packaged table, 64 pixel columns then the label; read once, read-only."""
    with resources.files("specbuilder").joinpath("data/digits.csv.gz").open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    table.flags.writeable = False
    return table


def digits(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Real 8x8 handwritten digits: pixels scaled to [0, 1]; a seeded subset when n < 1797;
    ``noise`` adds Gaussian noise to the pixels (clipped back to [0, 1])."""
    if n > DIGITS_ROWS:
        raise DataError(f"digits has {DIGITS_ROWS} samples; asked for {n}")
    table = _digits_table()
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.permutation(DIGITS_ROWS)[:n]) if n < DIGITS_ROWS else np.arange(DIGITS_ROWS)
    x = table[rows, :64] / 16.0
    if noise > 0:
        x = np.clip(x + rng.normal(0.0, noise, x.shape), 0.0, 1.0)
    return _pack(x, table[rows, 64])


def _entries() -> list[DatasetInfo]:
    two_d = (2,)
    return [
        DatasetInfo("spirals", spirals, "classification", 2, two_d, spirals.__doc__ or "", 1000, 0.03),
        DatasetInfo("moons", moons, "classification", 2, two_d, moons.__doc__ or "", 1000, 0.1),
        DatasetInfo("circles", circles, "classification", 2, two_d, circles.__doc__ or "", 1000, 0.05),
        DatasetInfo("xor", xor, "classification", 2, two_d, xor.__doc__ or "", 1000, 0.05),
        DatasetInfo("blobs", blobs, "classification", 3, two_d, blobs.__doc__ or "", 1000, 0.5),
        DatasetInfo("sine", sine, "regression", None, (1,), sine.__doc__ or "", 1000, 0.05),
        DatasetInfo("digits", digits, "classification", 10, (64,), " ".join((digits.__doc__ or "").split()), DIGITS_ROWS, 0.0),
    ]


DATASETS: dict[str, DatasetInfo] = {entry.name: entry for entry in _entries()}
"""Every built-in dataset by name."""


def load_dataset(name: str, n: int | None = None, seed: int = 0, noise: float | None = None) -> Dataset:
    """A built-in dataset; ``n`` and ``noise`` default to the entry's own values."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'{suggest(name, DATASETS)}; built-in datasets: {', '.join(DATASETS)}")
    info = DATASETS[name]
    n = info.n if n is None else n
    noise = info.noise if noise is None else noise
    if n < 1:
        raise DataError(f"n: must be >= 1, got {n}")
    if noise < 0:
        raise DataError(f"noise: must be >= 0, got {noise}")
    x, y = info.generate(n, seed, noise)
    return Dataset(name, x, y, info.task, info.classes)


def _numpy(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{what} must be numeric, got dtype {array.dtype}")
    return array


def from_arrays(x: Any, y: Any, name: str = "arrays") -> Dataset:
    """A ``Dataset`` from inputs and targets: integer targets mean classification, floats regression."""
    x, y = _numpy(x, "x"), _numpy(y, "y")
    if x.ndim < 2:
        raise DataError(f"x must have a batch dimension and at least one feature: shape [N, ...], got shape {list(x.shape)}")
    if y.ndim < 1:
        raise DataError(f"y must have a batch dimension: shape [N] or [N, ...], got shape {list(y.shape)}")
    if len(y) != len(x):
        raise DataError(f"x and y must have the same number of samples, got {len(x)} and {len(y)}")
    if len(x) == 0:
        raise DataError("the data has no samples")
    if not np.isfinite(x).all():
        raise DataError(f"x contains {int((~np.isfinite(x)).sum())} NaN or infinite values")
    x = x.astype(np.float32, copy=False)
    if y.dtype.kind in "biu":
        if y.ndim != 1:
            raise DataError(f"integer labels must have shape [N], got shape {list(y.shape)}")
        if y.min() < 0:
            raise DataError(f"labels must be >= 0, got {int(y.min())}")
        return Dataset(name, x, y.astype(np.int64, copy=False), "classification", int(y.max()) + 1)
    if not np.isfinite(y).all():
        raise DataError(f"y contains {int((~np.isfinite(y)).sum())} NaN or infinite values")
    return Dataset(name, x, y.astype(np.float32, copy=False), "regression")


def from_npz(path: str | Path) -> Dataset:
    """A ``Dataset`` from an ``.npz`` file holding arrays ``x`` and ``y`` (pickles refused)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    with np.load(path, allow_pickle=False) as archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            raise DataError(f"{path.name} must hold arrays 'x' and 'y'; it has {', '.join(archive.files) or 'none'}")
        return from_arrays(archive["x"], archive["y"], name=path.stem)


DataLike = Dataset | str | Path | tuple[Any, Any]


def as_dataset(data: DataLike, seed: int = 0) -> Dataset:
    """Any form ``train()`` accepts, as a ``Dataset``; a built-in name is generated with ``seed``."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str) and data in DATASETS:
        return load_dataset(data, seed=seed)
    if isinstance(data, Path) or (isinstance(data, str) and data.endswith(".npz")):
        return from_npz(data)
    if isinstance(data, str):
        raise DataError(f"unknown dataset '{data}'{suggest(data, DATASETS)}; give a built-in name ({', '.join(DATASETS)}), an .npz path or (x, y) arrays")
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return from_arrays(*data)
    raise DataError(f"data must be a dataset name, an .npz path or (x, y) arrays, got {type(data).__name__}")


__all__ = ["DATASETS", "DataError", "DataLike", "Dataset", "DatasetInfo", "as_dataset", "from_arrays", "from_npz", "load_dataset"]
