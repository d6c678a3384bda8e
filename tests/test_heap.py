"""glibc's malloc thresholds, fixed for processes that move multi-megabyte messages (``specbuilder.heap``)."""

from __future__ import annotations

import pytest

from specbuilder.heap import ENVIRONMENT, MMAP_THRESHOLD_MAX, glibc, set_thresholds


@pytest.mark.parametrize("variable", ENVIRONMENT)
def test_a_process_that_sets_a_threshold_itself_is_left_alone(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, str(MMAP_THRESHOLD_MAX))
    assert not set_thresholds(MMAP_THRESHOLD_MAX, 2 * MMAP_THRESHOLD_MAX)


def test_glibc_takes_the_thresholds_the_client_and_server_ask_for(monkeypatch: pytest.MonkeyPatch) -> None:
    if glibc("mallopt") is None:
        pytest.skip("this C library has no mallopt")
    for variable in ENVIRONMENT:
        monkeypatch.delenv(variable, raising=False)
    assert set_thresholds(MMAP_THRESHOLD_MAX, 2 * MMAP_THRESHOLD_MAX)
