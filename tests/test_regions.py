"""``SharedRegions``: mappings kept between calls, never stale, bounded, dropped on request."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from multiprocessing import shared_memory

import pytest

from specbuilder_wire.regions import RegionError, SharedRegions


@pytest.fixture
def make_region() -> Iterator:
    """``make_region(size, fill, name=None)``: a region made for the test, unlinked after it."""
    made: list[shared_memory.SharedMemory] = []

    def make(size: int, fill: int, name: str | None = None) -> shared_memory.SharedMemory:
        region = shared_memory.SharedMemory(name=name or f"specbuilder_test_{secrets.token_hex(6)}", create=True, size=size)
        region.buf[:size] = bytes([fill]) * size
        made.append(region)
        return region

    yield make
    for region in made:
        region.close()
        try:
            region.unlink()
        except FileNotFoundError:
            pass


def read(regions: SharedRegions, name: str, offset: int = 0, nbytes: int = 4) -> bytes:
    with regions.view(name, offset, nbytes) as view:
        assert view.readonly
        return bytes(view)


def test_a_region_is_mapped_once_and_read_as_it_is_now(make_region) -> None:
    regions = SharedRegions()
    region = make_region(4096, 1)
    assert read(regions, region.name) == b"\x01" * 4
    region.buf[:4] = b"abcd"  # the client writes the next batch into the same region
    assert read(regions, region.name) == b"abcd"
    assert len(regions) == 1


def test_a_region_made_again_under_the_same_name_is_mapped_again(make_region) -> None:
    regions = SharedRegions()
    first = make_region(4096, 1)
    assert read(regions, first.name) == b"\x01" * 4
    first.close()
    first.unlink()
    again = make_region(8192, 2, name=first.name)
    assert read(regions, again.name, offset=8000) == b"\x02" * 4  # the new size and contents, not the old mapping's
    assert len(regions) == 1


def test_missing_regions_and_reads_past_the_end_are_errors_that_say_which(make_region) -> None:
    regions = SharedRegions()
    with pytest.raises(RegionError, match="no shared-memory region named 'specbuilder_nothing_here'") as missing:
        read(regions, "specbuilder_nothing_here")
    assert missing.value.field == "name"
    region = make_region(4096, 0)
    with pytest.raises(RegionError, match="offset 4000 \\+ 100 bytes runs past the region's 4096 bytes") as past:
        read(regions, region.name, offset=4000, nbytes=100)
    assert past.value.field == ""


def test_what_is_kept_is_bounded_in_count_and_bytes(make_region) -> None:
    regions = SharedRegions(max_regions=2, max_bytes=2 * 4096 + 100)
    names = [make_region(4096, i).name for i in range(3)]
    for name in names:
        read(regions, name)
    assert len(regions) == 2  # the least recently used went
    big = make_region(4 * 4096, 9)
    assert read(regions, big.name) == b"\x09" * 4  # read, but too big to keep
    assert len(regions) == 2
    two_pages = make_region(2 * 4096, 5)
    read(regions, two_pages.name)
    assert len(regions) == 1  # with it, one more page would pass max_bytes


def test_clear_drops_mappings_while_a_view_in_use_stays_readable(make_region) -> None:
    regions = SharedRegions()
    region = make_region(4096, 7)
    with regions.view(region.name, 0, 4096) as view:
        regions.clear()
        assert len(regions) == 0
        assert bytes(view[:4]) == b"\x07" * 4
    assert read(regions, region.name) == b"\x07" * 4
