"""The client installs and works without torch: ``pip install ./clients/python`` in a fresh venv.

The one slow test here builds that venv (pip, with the pinned versions) and drives a real server
from it; the other checks the imports of this checkout's client, wire package and statistics types.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np

from server_helpers import ROOT, serving

PIP_SECONDS = 600
"""The longest the install may take: a bound on a hang, not a timing check."""

SCRIPT = """
import json, sys
import numpy as np
from specbuilder_client import Client, InvalidArgument

address, spec, bad = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
x = np.array([[-2.0, -0.5, 0.0, 1.5], [3.0, -1.0, 0.25, -4.0]], np.float32)
with Client(address, timeout=30) as client:
    valid = client.validate(spec)
    invalid = client.validate(bad)
    answer = client.evaluate(spec, x, statistics=True)
    try:
        client.evaluate(bad, x)
        refused = []
    except InvalidArgument as error:
        refused = [v.path for v in error.violations]
print(json.dumps({
    "valid": valid.valid, "output_shape": valid.output_shape, "spec": valid.spec,
    "problems": [p.path for p in invalid.problems], "refused": refused,
    "x": x.tolist(), "outputs": answer.outputs.tolist(), "stats": [(s.name, s.dead_fraction, s.units) for s in answer.stats],
    "torch": sorted(name for name in sys.modules if name.split(".")[0] == "torch"),
}))
"""
SPEC = {"name": "gate", "input_shape": [4], "layers": [{"type": "relu", "name": "act"}]}
BAD = {"input_shape": [4], "layers": [{"type": "relu"}, {"type": "leaky_relu", "negative_slope": -1}]}


def _run(command: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=PIP_SECONDS, check=False, **kwargs)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def test_the_client_installs_without_torch_and_works_against_a_server(tmp_path: Path) -> None:
    # a copy of the distribution's folder: the build writes into it, and nothing outside it may be needed
    source = shutil.copytree(ROOT / "clients/python", tmp_path / "client",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv/bin/python"
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", ROOT / "requirements/constraints.txt", source])
    installed = _run([python, "-m", "pip", "list", "--format=json"]).stdout
    assert {package["name"].lower() for package in json.loads(installed)} >= {"specbuilder-client", "grpcio", "numpy", "pydantic"}
    assert "torch" not in {package["name"].lower() for package in json.loads(installed)}

    with serving(tmp_path / "store") as server:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        done = _run([python, "-c", SCRIPT, server.address, json.dumps(SPEC), json.dumps(BAD)], cwd=tmp_path, env=env)
    result = json.loads(done.stdout)

    assert result["torch"] == []
    assert (result["valid"], result["output_shape"], result["spec"]["layers"]) == (True, [4], [{"type": "relu", "name": "act"}])
    assert result["problems"] == result["refused"] == ["layers[1].negative_slope"]
    np.testing.assert_array_equal(result["outputs"], np.maximum(np.array(result["x"]), 0))
    assert result["stats"] == [["act", 0.25, 4]]  # the unit that is negative for both samples is dead


def test_the_wire_package_the_client_and_the_statistics_types_import_no_torch() -> None:
    code = (
        "import sys\n"
        "def loaded(top): return sorted(name for name in sys.modules if name.split('.')[0] == top)\n"
        "import specbuilder_wire, specbuilder_client\n"
        "import specbuilder_wire.arrays, specbuilder_wire.message_bytes, specbuilder_wire.values, specbuilder_wire.results\n"
        "import specbuilder_wire.regions, specbuilder_wire.localsocket, specbuilder_wire.heap\n"
        "print(loaded('torch'), loaded('specbuilder'))\n"
        "from specbuilder.stats import LayerStats\n"
        "print(loaded('torch'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout.splitlines()) == (0, ["[] []", "[]"]), done.stderr
