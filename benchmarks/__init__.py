"""specbuilder benchmarks: same-run ratios against plain PyTorch (see ``benchmarks.harness``).

Run them with ``python -m benchmarks`` (or ``make bench``); each ``bench_<name>.py`` module
exposes ``run(quick: bool) -> list[Table]``.
"""
