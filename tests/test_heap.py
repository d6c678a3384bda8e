"""Our rules for glibc's malloc thresholds (``specbuilder_wire.heap``); what glibc then does is glibc's."""

from __future__ import annotations

import pytest

from specbuilder_wire import heap


@pytest.mark.parametrize("variable", heap.ENVIRONMENT)
def test_a_process_that_sets_a_threshold_itself_is_left_alone(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, str(heap.MMAP_THRESHOLD_MAX))
    monkeypatch.setattr(heap, "glibc", lambda function: pytest.fail(f"asked glibc for {function}"))
    assert not heap.set_thresholds(heap.MMAP_THRESHOLD_MAX, 2 * heap.MMAP_THRESHOLD_MAX)


def test_without_mallopt_nothing_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in heap.ENVIRONMENT:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(heap, "glibc", lambda function: None)
    assert not heap.set_thresholds(heap.MMAP_THRESHOLD_MAX, 2 * heap.MMAP_THRESHOLD_MAX)


def test_a_client_fixes_32_mib_from_the_heap_and_64_mib_kept_once(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(heap, "set_thresholds", lambda mmap_threshold, trim_threshold: not asked.append((mmap_threshold, trim_threshold)))
    heap.keep_large_buffers.cache_clear()
    try:
        assert heap.keep_large_buffers() and heap.keep_large_buffers()
    finally:
        heap.keep_large_buffers.cache_clear()
    assert asked == [(32 * 2**20, 64 * 2**20)]
