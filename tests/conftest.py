"""Shared pytest set-up: ``cuda`` tests skip without a CUDA device, ``slow`` tests without ``--runslow``.

torch is imported only when a collected test is marked ``cuda``, so test files that check
"this package imports no torch" still see a clean interpreter.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if cuda_items:
        import torch

        if not torch.cuda.is_available():
            skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
            for item in cuda_items:
                item.add_marker(skip_cuda)
    if not config.getoption("--runslow"):
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(skip_slow)
