"""Fixtures of the reliability suite: how long to push (``budget``), what was seen (``tally``), and the
server the hostile-input tests share (``hostile_server``, reached through ``hostile``).

Every test here is bounded: short by default (the whole suite in CI), long with ``--soak``.
A test records each thing it tried and the outcome in ``tally``; with
``--reliability-report DIR`` those records land in ``DIR/<test>.json`` for ``report.py``.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from server_helpers import connect, server_process

from specbuilder.demo.server import ServerProcess

if TYPE_CHECKING:
    from specbuilder_wire.v1.service_pb2_grpc import ModelServiceStub

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass(frozen=True)
class Budget:
    """How hard a test pushes: ``pick(short, soak)`` chooses by mode."""

    soak: bool

    def pick(self, short: Any, soak: Any) -> Any:
        return soak if self.soak else short


@dataclass
class Tally:
    """What one test tried, by kind and outcome (``count``), and the figures it measured (``figure``)."""

    test: str
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    figures: dict[str, float | int | str] = field(default_factory=dict)

    def count(self, kind: str, outcome: str, n: int = 1) -> None:
        """``n`` more of ``kind`` (e.g. "garbage JSON spec") ended as ``outcome`` (e.g. "INVALID_ARGUMENT")."""
        self.outcomes[(kind, outcome)] += n

    def figure(self, name: str, value: float | int | str) -> None:
        """A measured figure, e.g. ``figure("p99 ms", 41.2)``."""
        self.figures[name] = value

    def as_json(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "outcomes": [{"kind": kind, "outcome": outcome, "count": n} for (kind, outcome), n in sorted(self.outcomes.items())],
            "figures": self.figures,
        }


@pytest.fixture(scope="session")
def budget(pytestconfig: pytest.Config) -> Budget:
    return Budget(bool(pytestconfig.getoption("--soak")))


@pytest.fixture(scope="session")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One ``specbuilder serve`` subprocess (a ``ServerProcess``) for the hostile-input tests: a crash
    kills it and shows as a dead process. Shared, so the suite starts it once."""
    with server_process(tmp_path_factory.mktemp("hostile-store")) as running:
        yield running


@pytest.fixture(scope="module")
def hostile(hostile_server: ServerProcess) -> Iterator[ModelServiceStub]:
    """A ``ModelServiceStub`` on ``hostile_server``, one per test module."""
    with connect(hostile_server.address) as connected:
        yield connected


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    record = Tally(request.node.nodeid)
    yield record
    folder = request.config.getoption("--reliability-report")
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
        (path / f"{name}.json").write_text(json.dumps(record.as_json(), indent=1))
