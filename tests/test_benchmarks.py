"""Every benchmark module imports and has its ``run``: a module renamed elsewhere must not leave
``make bench`` broken while the suite stays green (the benchmarks themselves are timed, so the suite
never runs them)."""

from __future__ import annotations

import importlib
import inspect

import pytest

from benchmarks.__main__ import PREFIX, discover


def test_the_benchmarks_are_found() -> None:
    assert {"grpc", "stats", "batching", "call_cost"} <= set(discover())


@pytest.mark.parametrize("name", discover())
def test_a_benchmark_module_imports_and_has_its_run(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{PREFIX}{name}")
    assert callable(module.run)
    assert next(iter(inspect.signature(module.run).parameters)) == "quick"
