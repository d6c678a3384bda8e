"""What every command module shares: the user-error exception, spec loading, tables."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from specbuilder.errors import SpecError
from specbuilder.spec import DEFAULT_MAX_PARAMS, ModelSpec, parse_spec


class CommandError(Exception):
    """A user error: ``main`` prints ``lines`` to stderr, one per line, and exits 1 (no traceback)."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def load_spec(path: str | Path, max_params: int | None = DEFAULT_MAX_PARAMS) -> ModelSpec:
    """The validated spec in a JSON file; every problem becomes a ``file: path: message`` line."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise CommandError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        return parse_spec(data, max_params=max_params)
    except SpecError as error:
        raise CommandError(*(f"{path}: {problem}" for problem in error.problems)) from None


def count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_max_params(parser: argparse.ArgumentParser) -> None:
    """The ``--max-params N`` option of every command that reads specs."""
    parser.add_argument(
        "--max-params", type=count, default=DEFAULT_MAX_PARAMS, metavar="N",
        help=f"refuse specs with more than N parameters (default {DEFAULT_MAX_PARAMS:,})",
    )


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns under a header row and a rule, trailing spaces trimmed."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
