"""Same answers on every replica: a spec's weights are initialized from the request's seed, so the same
spec, seed and input give bit-identical outputs from two ``specbuilder serve`` processes, after an eviction
from the compile cache, and through Evaluate and StreamEvaluate alike; a stored model ignores the seed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from server_helpers import QUICK, SPIRALS, server_process
from specbuilder.compiler import compile_spec
from specbuilder.spec import parse_spec
from specbuilder.store import ModelStore
from specbuilder_client import Client
from specbuilder_server.model_cache import ModelCache, Models

SPEC: dict[str, Any] = {
    "input_shape": [6],
    "layers": [
        {"type": "linear", "out_features": 16, "activation": "gelu"},
        {"type": "layer_norm"},
        {"type": "linear", "out_features": 3},
    ],
}
OTHER = {"input_shape": [6], "layers": [{"type": "linear", "out_features": 5}]}
X = np.random.default_rng(3).normal(size=(9, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Client]]:
    """Clients of two separate server processes over stores of their own; the first keeps one model at a time."""
    first, second = (tmp_path_factory.mktemp(name) / "store" for name in ("first", "second"))
    with server_process(first, "--cache-size", "1") as one, server_process(second) as two:
        with Client(one.address) as a, Client(two.address) as b:
            yield a, b


def outputs(client: Client, spec: dict[str, Any], seed: int | None = None) -> np.ndarray:
    result = client.evaluate(spec, X) if seed is None else client.evaluate(spec, X, seed=seed)
    assert result.outputs is not None
    return result.outputs


def test_two_server_processes_give_bit_identical_outputs_for_one_spec_seed_and_input(clients: tuple[Client, Client]) -> None:
    a, b = clients
    for seed in (0, 7, 2**64 - 1):
        assert outputs(a, SPEC, seed).tobytes() == outputs(b, SPEC, seed).tobytes()
    assert outputs(a, SPEC).tobytes() == outputs(b, SPEC, 0).tobytes()  # unset is 0


def test_another_seed_gives_other_weights(clients: tuple[Client, Client]) -> None:
    a, _ = clients
    assert not np.array_equal(outputs(a, SPEC, 7), outputs(a, SPEC, 8))


def test_the_seed_initializes_as_compile_spec_and_training_do(clients: tuple[Client, Client]) -> None:
    a, _ = clients
    model = compile_spec(SPEC, device="cpu", seed=7).eval()
    with torch.inference_mode():
        expected = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(outputs(a, SPEC, 7), expected, rtol=1e-6, atol=1e-6)  # the same weights; kernels may round apart


def test_an_evicted_spec_recompiles_to_the_same_outputs(clients: tuple[Client, Client]) -> None:
    a, b = clients
    before = outputs(a, SPEC, 7)
    outputs(a, OTHER, 7)  # the first server keeps one model: this one evicts SPEC's
    assert outputs(a, SPEC, 7).tobytes() == before.tobytes() == outputs(b, SPEC, 7).tobytes()


def test_stream_evaluate_takes_the_seed_too(clients: tuple[Client, Client]) -> None:
    a, b = clients
    streamed = np.concatenate(list(b.evaluate_stream(SPEC, [X[:4], X[4:]], seed=7)))
    assert streamed.tobytes() == outputs(a, SPEC, 7).tobytes()
    assert not np.array_equal(np.concatenate(list(b.evaluate_stream(SPEC, [X], seed=8))), streamed)


def test_a_stored_model_ignores_the_seed(clients: tuple[Client, Client]) -> None:
    a, _ = clients
    record = a.train(SPIRALS, "spirals", **QUICK).result()
    x = X[:, :2].copy()
    first, second = (a.evaluate(record.model_id, x, seed=seed).outputs for seed in (1, 2))
    assert first is not None and second is not None and first.tobytes() == second.tobytes()


def test_the_cache_keeps_a_spec_per_seed_and_recompiles_the_same_weights(tmp_path: Path) -> None:
    spec = parse_spec(SPEC)
    with ModelStore(tmp_path / "store") as store:
        models = Models(store, torch.device("cpu"), ModelCache(1, 1 << 30), max_params=10**6)
        first = models.compiled(spec, seed=7)
        assert models.compiled(spec, seed=7) is first
        other = models.compiled(spec, seed=8)  # another seed is another model, and evicts the first
        again = models.compiled(spec, seed=7)
        assert again is not first and other is not first
        for name, tensor in first.module.state_dict().items():
            assert torch.equal(again.module.state_dict()[name], tensor), name
        assert not torch.equal(other.module.state_dict()["linear_0.weight"], first.module.state_dict()["linear_0.weight"])
