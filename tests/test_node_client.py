"""A client built from protos/ alone, in another language: examples/node/evaluate.mjs (Node.js, @grpc/grpc-js and
@grpc/proto-loader, no generated code) lists the layer types and evaluates a spec with a seed against a real
``specbuilder serve``; its outputs are the Python client's for the same spec, seed and input, to the last bit.

node comes with npm, which installs buf for the suite; ``make test`` installs the two packages beside it (npm ci).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from server_helpers import server_process
from specbuilder.demo.server import ServerProcess
from specbuilder.layers import LAYERS
from specbuilder_client import Client

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "node" / "evaluate.mjs"
ROWS = 3
"""Samples the script sends."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with server_process(tmp_path_factory.mktemp("node") / "store") as server:
        yield server


def node(*args: str) -> list[str]:
    """The script's output lines, run with ``args``."""
    executable = shutil.which("node")
    if executable is None or not (ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("node and node_modules/@grpc are missing: `make test` installs them (npm ci)")
    result = subprocess.run([executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize(("example", "seed"), [("tutorial.json", 7), ("digits_cnn.json", 2**64 - 1)])
def test_the_node_client_gets_the_python_clients_outputs(served: ServerProcess, example: str, seed: int) -> None:
    spec_file = ROOT / "examples" / example
    lines = node(served.address, str(spec_file), str(seed))
    header = lines.index(next(line for line in lines if line.startswith("outputs [")))
    assert [line.split(":", 1)[0] for line in lines[:header]] == list(LAYERS)
    rows = [json.loads(line) for line in lines[header + 1:]]

    spec = json.loads(spec_file.read_text())
    x = (np.arange(ROWS * int(np.prod(spec["input_shape"]))) / 10 - 1).astype(np.float32).reshape(ROWS, *spec["input_shape"])
    with Client(served.address) as client:
        expected = client.evaluate(spec, x, seed=seed).outputs
    assert expected is not None
    assert lines[header] == f"outputs [{', '.join(map(str, expected.shape))}] (seed {seed}):"
    assert rows == expected.reshape(ROWS, -1).astype(np.float64).tolist()


def test_the_node_client_says_what_went_wrong(served: ServerProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"input_shape": [2], "layers": [{"type": "relu7"}]}))
    result = subprocess.run([shutil.which("node") or "node", str(SCRIPT), served.address, str(bad)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.strip() == "INVALID_ARGUMENT: layers[0].type: unknown layer type 'relu7'; did you mean 'relu'?"
