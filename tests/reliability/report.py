"""Tabulate a reliability run: ``python tests/reliability/report.py DIR`` prints Markdown tables.

``DIR`` is what ``pytest tests/reliability --reliability-report DIR`` wrote: one JSON file per
test with the outcomes it counted and the figures it measured.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


def render(folder: Path) -> str:
    """Two tables: what was tried by kind and outcome, then every measured figure."""
    outcomes: Counter[tuple[str, str]] = Counter()
    figures: list[tuple[str, str, object]] = []
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        test = record["test"].split("::")[-1]
        for row in record["outcomes"]:
            outcomes[(row["kind"], row["outcome"])] += row["count"]
        figures.extend((test, name, value) for name, value in record["figures"].items())
    lines = ["| tried | outcome | count |", "|---|---|---:|"]
    lines += [f"| {kind} | {outcome} | {n} |" for (kind, outcome), n in sorted(outcomes.items())]
    lines += ["", "| test | figure | value |", "|---|---|---:|"]
    lines += [f"| {test} | {name} | {value:.4g} |" if isinstance(value, float) else f"| {test} | {name} | {value} |"
              for test, name, value in figures]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/reliability/report.py DIR")
    print(render(Path(sys.argv[1])))
