"""The one way specbuilder benchmarks measure: same-run ratios against plain PyTorch.

Every figure is a ratio between *ours* (specbuilder) and a *baseline* (the same work written
by hand in plain in-process PyTorch), both measured in the same run, alternating call by call
so that drift (frequency scaling, a neighbour's job, a warming cache) hits both sides alike.
Each side is warmed up, then timed many times with ``time.perf_counter_ns`` and the garbage
collector disabled; a timing reports the median with p10/p90 beside it, never a mean.

API (``from benchmarks.harness import ...``)::

    configure(threads=2, device=None)     # torch.set_num_threads; __main__ calls it once
    fn = synchronized(fn, device)         # on CUDA, fn() returns only once the device is done
    t = measure(fn, repeat=200, warmup=20, number=1, budget_s=None)   # -> Timing of fn()
    base, ours = compare(baseline_fn, ours_fn, repeat=200, warmup=20, number=1, budget_s=None)
    t.median_ns, t.p10_ns, t.p90_ns, t.samples_ns; str(t) == "1.23 ms (p10 1.2 ms, p90 1.31 ms)"
    table = Table("Title", note="what the rows mean")
    table.ratio("name", base, ours, target=1.10)   # ratio = ours.median / base.median
    table.figure("name", "3.1 ms", baseline="...", target="< 10 ms", ok=True)  # free-form row
    print(table.markdown()); table.write("out.md")
    rss_bytes(), peak_rss_bytes()         # memory figures (Linux); format_ns(ns) -> "12.3 µs"

``number`` calls ``fn`` that many times per sample and divides, for calls too short to time
one by one (under ~10 µs). ``budget_s`` stops sampling early once that much time has passed
(at least ``MIN_SAMPLES`` samples are always taken), to keep ``--quick`` runs short.
The collector stays off for the whole timed loop: garbage in reference cycles is freed after it.
A benchmark module ``benchmarks/bench_<name>.py`` exposes ``run(quick: bool) -> list[Table]``;
``python -m benchmarks`` discovers and runs it. One that takes ``device`` too
(``run(quick, device)``) runs on ``--device``; the rest run on the CPU. CUDA work is queued
and returns at once: every timed side on CUDA is ``synchronized``, so a sample ends when the
device is done, and since each side ends that way the next one starts on an idle device.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEFAULT_THREADS = 2
MIN_SAMPLES = 5


def configure(threads: int = DEFAULT_THREADS, device: torch.device | None = None) -> str:
    """Fix torch's intra-op thread count; returns a one-line description of the environment."""
    torch.set_num_threads(threads)
    gpu = f", {torch.cuda.get_device_name(device)} ({device})" if device is not None and device.type == "cuda" else ""
    return (
        f"torch {torch.__version__}, Python {platform.python_version()}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs ({platform.machine()}){gpu}"
    )


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn`` that returns only once ``device`` has finished the work it queued (``fn`` itself off CUDA)."""
    if device.type != "cuda":
        return fn

    def run() -> object:
        result = fn()
        torch.cuda.synchronize(device)
        return result

    return run


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collect once, then keep the garbage collector off so no collection lands in a timing."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _percentile(sorted_ns: list[int], q: float) -> float:
    """Linear-interpolated percentile (0..100) of already-sorted samples."""
    position = (len(sorted_ns) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(sorted_ns) - 1)
    return sorted_ns[low] + (sorted_ns[high] - sorted_ns[low]) * (position - low)


def format_ns(ns: float) -> str:
    """A duration with a unit chosen for three significant digits: ``850 ns``, ``12.3 µs``, ``1.20 s``."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            value = ns / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{ns:.0f} ns"


@dataclass(frozen=True)
class Timing:
    """Per-call durations of one measured function, in nanoseconds (one entry per sample)."""

    samples_ns: tuple[float, ...]

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples_ns)

    @property
    def p10_ns(self) -> float:
        return _percentile(sorted(self.samples_ns), 10)

    @property
    def p90_ns(self) -> float:
        return _percentile(sorted(self.samples_ns), 90)

    def __str__(self) -> str:
        spread = f"p10 {format_ns(self.p10_ns)}, p90 {format_ns(self.p90_ns)}"
        return f"{format_ns(self.median_ns)} ({spread})"


def _sample(fn: Callable[[], object], number: int) -> float:
    """Nanoseconds per call of ``number`` back-to-back calls of ``fn``."""
    start = time.perf_counter_ns()
    for _ in range(number):
        fn()
    return (time.perf_counter_ns() - start) / number


def compare(
    baseline: Callable[[], object],
    ours: Callable[[], object],
    *,
    repeat: int = 200,
    warmup: int = 20,
    number: int = 1,
    budget_s: float | None = None,
) -> tuple[Timing, Timing]:
    """Time ``baseline`` and ``ours`` alternately, swapping which goes first every round."""
    sides = (baseline, ours)
    for _ in range(warmup):
        for fn in sides:
            fn()
    samples: tuple[list[float], list[float]] = ([], [])
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    with gc_paused():
        for round_index in range(repeat):
            order = (0, 1) if round_index % 2 == 0 else (1, 0)
            for side in order:
                samples[side].append(_sample(sides[side], number))
            if deadline is not None and round_index + 1 >= MIN_SAMPLES and time.perf_counter() > deadline:
                break
    return Timing(tuple(samples[0])), Timing(tuple(samples[1]))


def measure(
    fn: Callable[[], object],
    *,
    repeat: int = 200,
    warmup: int = 20,
    number: int = 1,
    budget_s: float | None = None,
) -> Timing:
    """Time ``fn`` alone, for figures that have no plain-PyTorch counterpart."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    with gc_paused():
        for _ in range(repeat):
            samples.append(_sample(fn, number))
            if deadline is not None and len(samples) >= MIN_SAMPLES and time.perf_counter() > deadline:
                break
    return Timing(tuple(samples))


def rss_bytes() -> int:
    """Resident memory of this process now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The most resident memory this process has ever had (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class Row:
    """One line of a table, every cell already text."""

    name: str
    baseline: str
    ours: str
    ratio: str
    target: str
    verdict: str


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("meets" if ok else "**misses**")


@dataclass
class Table:
    """A titled Markdown table: ratio rows (ours vs plain PyTorch) and free-form figure rows."""

    title: str
    note: str = ""
    rows: list[Row] = field(default_factory=list)

    HEADER = ("", "plain PyTorch", "specbuilder", "ratio", "target", "verdict")

    def ratio(self, name: str, baseline: Timing, ours: Timing, target: float | None = None) -> float:
        """Add a row comparing medians; ``target`` is the highest acceptable ratio. Returns the ratio."""
        value = ours.median_ns / baseline.median_ns
        ok = None if target is None else value <= target
        self.rows.append(Row(name, str(baseline), str(ours), f"{value:.2f}×",
                             "" if target is None else f"≤ {target:.2f}×", _verdict(ok)))
        return value

    def figure(self, name: str, value: str, *, baseline: str = "", target: str = "", ok: bool | None = None) -> None:
        """Add a free-form row: ``value`` goes in the specbuilder column, no ratio."""
        self.rows.append(Row(name, baseline, value, "", target, _verdict(ok)))

    def markdown(self) -> str:
        """The table as Markdown: a ``###`` title, the note, then the rows."""
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(self.HEADER) + " |")
        lines.append("|" + "---|" * len(self.HEADER))
        for row in self.rows:
            lines.append("| " + " | ".join((row.name, row.baseline, row.ours, row.ratio, row.target, row.verdict)) + " |")
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path, append: bool = False) -> None:
        """Write (or append) the Markdown to ``path``."""
        with open(path, "a" if append else "w", encoding="utf-8") as out:
            out.write(self.markdown() + "\n")

    __str__ = markdown
