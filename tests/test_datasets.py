"""Built-in datasets (parametrized over the registry) and every form of training data."""

from __future__ import annotations

import numpy as np
import pytest

from specbuilder.datasets import DATASETS, DIGITS_ROWS, DataError, Dataset, as_dataset, from_arrays, load_dataset

SMALL = 240


def small(name: str, seed: int = 0) -> Dataset:
    return load_dataset(name, n=min(SMALL, DATASETS[name].n), seed=seed)


@pytest.mark.parametrize("name", DATASETS)
def test_entry_shapes_types_and_labels(name: str) -> None:
    info = DATASETS[name]
    data = small(name)
    assert data.name == name and data.task == info.task and data.classes == info.classes
    assert data.x.dtype == np.float32 and data.x.shape == (SMALL, *info.input_shape)
    assert np.isfinite(data.x).all()
    if info.task == "classification":
        assert data.y.dtype == np.int64 and data.y.shape == (SMALL,)
        assert set(np.unique(data.y)) == set(range(info.classes or 0)), "every class appears"
    else:
        assert data.y.dtype == np.float32 and data.y.shape == (SMALL,)
    assert info.description and info.n >= SMALL and info.noise >= 0


@pytest.mark.parametrize("name", DATASETS)
def test_entry_is_deterministic_given_its_seed(name: str) -> None:
    first, again, other = small(name, seed=3), small(name, seed=3), small(name, seed=4)
    assert np.array_equal(first.x, again.x) and np.array_equal(first.y, again.y)
    assert not np.array_equal(first.x, other.x)


@pytest.mark.parametrize("name", [name for name, info in DATASETS.items() if info.noise > 0])
def test_noise_moves_the_samples(name: str) -> None:
    clean = load_dataset(name, n=100, noise=0.0)
    noisy = load_dataset(name, n=100, noise=0.3)
    kept, moved = ("y", "x") if clean.task == "classification" else ("x", "y")
    assert np.array_equal(getattr(clean, kept), getattr(noisy, kept))
    assert 0.05 < float(np.abs(getattr(noisy, moved) - getattr(clean, moved)).mean()) < 1.0


def test_digits_is_the_real_table() -> None:
    data = load_dataset("digits")
    assert len(data) == DIGITS_ROWS and data.x.shape == (DIGITS_ROWS, 64)
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    # the first image of scikit-learn's digits, a zero: row 0 begins 0, 0, 5, 13, 9, 1
    assert data.x[0, :6].tolist() == [0.0, 0.0, 5 / 16, 13 / 16, 9 / 16, 1 / 16] and data.y[0] == 0
    assert np.bincount(data.y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_subset_and_noise() -> None:
    subset = load_dataset("digits", n=100, seed=1, noise=0.1)
    assert subset.x.shape == (100, 64) and 0.0 <= subset.x.min() and subset.x.max() <= 1.0
    with pytest.raises(DataError, match="digits has 1797 samples; asked for 2000"):
        load_dataset("digits", n=2000)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: load_dataset("spiral"), "unknown dataset 'spiral'; did you mean 'spirals'?"),
        (lambda: load_dataset("moons", n=0), "n: must be >= 1, got 0"),
        (lambda: load_dataset("moons", noise=-1.0), "noise: must be >= 0, got -1"),
    ],
)
def test_load_errors(call: object, message: str) -> None:
    with pytest.raises(DataError) as caught:
        call()  # type: ignore[operator]
    assert str(caught.value).startswith(message)


def test_arrays_infer_the_task() -> None:
    x = np.zeros((4, 3), dtype=np.float64)
    classes = from_arrays(x, np.array([0, 2, 1, 2]))
    assert classes.task == "classification" and classes.classes == 3 and classes.x.dtype == np.float32
    values = from_arrays(x, np.array([0.5, 1.0, 2.0, 3.0]))
    assert values.task == "regression" and values.classes is None and values.y.dtype == np.float32


def test_tensors_are_accepted() -> None:
    torch = pytest.importorskip("torch")
    data = as_dataset((torch.ones(5, 2), torch.arange(5) % 2))
    assert data.x.shape == (5, 2) and data.y.tolist() == [0, 1, 0, 1, 0]


def test_npz_round_trip(tmp_path: object) -> None:
    source = load_dataset("moons", n=50)
    path = tmp_path / "mine.npz"  # type: ignore[operator]
    np.savez(path, x=source.x, y=source.y)
    for form in (path, str(path)):
        data = as_dataset(form)
        assert data.name == "mine" and np.array_equal(data.x, source.x) and np.array_equal(data.y, source.y)


def test_npz_without_y_and_with_objects(tmp_path: object) -> None:
    path = tmp_path / "bad.npz"  # type: ignore[operator]
    np.savez(path, x=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(DataError, match="bad.npz must hold arrays 'x' and 'y'; it has x, labels"):
        as_dataset(path)
    pickled = tmp_path / "pickled.npz"  # type: ignore[operator]
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(ValueError, match="allow_pickle"):
        as_dataset(pickled)


def test_named_and_passed_datasets() -> None:
    assert as_dataset("blobs", seed=2).name == "blobs"
    assert np.array_equal(as_dataset("blobs", seed=2).x, load_dataset("blobs", seed=2).x)
    data = load_dataset("xor", n=10)
    assert as_dataset(data) is data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("spirls", "unknown dataset 'spirls'; did you mean 'spirals'?; give a built-in name"),
        ("missing.npz", "no such file: missing.npz"),
        (42, "data must be a dataset name, an .npz path or (x, y) arrays, got int"),
        ((np.zeros(3), np.zeros(3)), "x must have a batch dimension and at least one feature: shape [N, ...], got shape [3]"),
        ((np.zeros((3, 2)), np.zeros(4)), "x and y must have the same number of samples, got 3 and 4"),
        ((np.zeros((0, 2)), np.zeros(0)), "the data has no samples"),
        ((np.array([["a", "b"]]), np.zeros(1)), "x must be numeric, got dtype <U1"),
        ((np.array([[np.nan, 1.0], [np.inf, 0]]), np.zeros(2)), "x contains 2 NaN or infinite values"),
        ((np.zeros((2, 2)), np.array([0.0, np.nan])), "y contains 1 NaN or infinite values"),
        ((np.zeros((2, 2)), np.array([0, -1])), "labels must be >= 0, got -1"),
        ((np.zeros((2, 2)), np.zeros((2, 2), dtype=np.int64)), "integer labels must have shape [N], got shape [2, 2]"),
    ],
)
def test_data_errors_say_what_is_wrong(data: object, message: str) -> None:
    with pytest.raises(DataError) as caught:
        as_dataset(data)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)
