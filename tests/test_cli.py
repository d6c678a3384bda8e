"""The command line: output, exit codes (0 ok, 1 user error, 2 usage) and no tracebacks."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from specbuilder.activations import ACTIVATIONS
from specbuilder.cli import build_parser, main
from specbuilder.spec import STYLES, ModelSpec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TUTORIAL = str(EXAMPLES / "tutorial.json")
BAD_SPEC = {
    "input_shape": [4],
    "layers": [{"type": "linear", "out_features": 3}, {"type": "leaky_relu", "negative_slope": -1}, {"type": "relu7"}],
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(BAD_SPEC))
    return path


def test_validate_prints_one_line_per_valid_file(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in EXAMPLES.glob("*.json"))
    code, out, err = run(capsys, "validate", *files)
    assert (code, err) == (0, [])
    assert out[files.index(TUTORIAL)] == f"{TUTORIAL}: ok: tutorial: input [N, 10] -> output [N, 1], 3 layers, 61 parameters"
    assert [line.split(": ok: ")[0] for line in out] == files


def test_validate_reports_every_problem_of_every_file(capsys: pytest.CaptureFixture[str], bad: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"input_shape": [4],')
    listed = tmp_path / "list.json"
    listed.write_text("[1]")
    missing = tmp_path / "missing.json"
    code, out, err = run(capsys, "validate", str(bad), TUTORIAL, str(broken), str(listed), str(missing), str(tmp_path))
    assert code == 1
    assert out == [f"{TUTORIAL}: ok: tutorial: input [N, 10] -> output [N, 1], 3 layers, 61 parameters"]
    assert err == [
        f"{bad}: layers[1].negative_slope: must be >= 0, got -1",
        f"{bad}: layers[2].type: unknown layer type 'relu7'; did you mean 'relu'?",
        f"{broken}: Invalid JSON: EOF while parsing a value at line 1 column 20",
        f"{listed}: must be an object, got list [1]",
        f"{missing}: cannot read: No such file or directory",
        f"{tmp_path}: cannot read: Is a directory",
    ]


def test_validate_max_params(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "validate", TUTORIAL, "--max-params", "61")[0] == 0
    code, out, err = run(capsys, "validate", TUTORIAL, "--max-params", "60")
    assert (code, out) == (1, [])
    assert err == [f"{TUTORIAL}: layers: the model has 61 parameters, over the limit of 60 (max_params)"]


@pytest.mark.parametrize(
    "argv",
    [[], ["validate"], ["nonsense"], ["compile", TUTORIAL, "--style", "graph"], ["compile", TUTORIAL, "--max-params", "-1"],
     ["compile", TUTORIAL, "--max-params", "many"], ["schema", "extra"]],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err and err[0].startswith("usage: specbuilder")
    assert not any("Traceback" in line for line in err)


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert any(line.strip().startswith("validate") for line in out)


def test_every_command_is_registered_with_a_runner() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"validate", "compile", "schema", "activations", "demo"} <= set(commands)
    for name, sub in commands.items():
        assert callable(sub.get_default("run")), name


@pytest.mark.parametrize("style", STYLES)
def test_compile_prints_table_counts_and_output_shape(capsys: pytest.CaptureFixture[str], style: str) -> None:
    code, out, err = run(capsys, "compile", str(EXAMPLES / "digits_cnn.json"), "--style", style)
    assert (code, err) == (0, [])
    spec = parse_spec(EXAMPLES / "digits_cnn.json")
    text = "\n".join(out)
    assert spec.summary() in text
    assert out[-2] == "input [N, 1, 8, 8] -> output [N, 10], 3,818 parameters"
    model = "Sequential" if style == "sequential" else "FunctionalModel"
    assert out[-1] == f"compiled: {model} with 3,818 parameters (3,818 trainable) in 6 tensors, 0 buffer elements"


@pytest.mark.parametrize("style", STYLES)
def test_compile_code_prints_generated_source(capsys: pytest.CaptureFixture[str], style: str) -> None:
    from specbuilder.codegen import generate_code

    assert main(["compile", TUTORIAL, "--code", "--style", style]) == 0
    assert capsys.readouterr().out == generate_code(parse_spec(Path(TUTORIAL)), style)


def test_compile_invalid_spec_exits_1(capsys: pytest.CaptureFixture[str], bad: Path) -> None:
    code, out, err = run(capsys, "compile", str(bad))
    assert (code, out) == (1, [])
    assert err[0] == f"{bad}: layers[1].negative_slope: must be >= 0, got -1"
    code, out, err = run(capsys, "compile", TUTORIAL, "--max-params", "10")
    assert (code, err) == (1, [f"{TUTORIAL}: layers: the model has 61 parameters, over the limit of 10 (max_params)"])


def test_schema_is_the_model_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == ModelSpec.model_json_schema()


def test_activations_table_has_every_registry_entry(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "activations")
    assert code == 0
    assert out[0].split() == ["name", "parameters", "range", "formula"]
    rows = {line.split()[0]: line for line in out[2:]}
    assert list(rows) == list(ACTIVATIONS)
    for name, kind in ACTIVATIONS.items():
        assert rows[name].endswith(kind.formula)
    assert rows["leaky_relu"].split()[1:3] == ["negative_slope=0.01", "[-inf,"]
    assert rows["threshold"].split()[1:3] == ["threshold,", "value"]
    assert rows["sigmoid"].split()[1:4] == ["-", "[0,", "1]"]
    assert rows["hardtanh"].split()[1:5] == ["min_val=-1,", "max_val=1", "[-1,", "1]"]


def test_closed_stdout_ends_quietly(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class ClosedPipe(io.StringIO):
        def __init__(self, fd: int) -> None:
            super().__init__()
            self.fd = fd

        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self) -> int:
            return self.fd

    with open(tmp_path / "stdout", "w") as sink:
        monkeypatch.setattr(sys, "stdout", ClosedPipe(sink.fileno()))
        assert main(["activations"]) == 1
    assert capsys.readouterr().err == ""


def test_module_entry_point_and_script_exit_codes(bad: Path) -> None:
    script = Path(sys.executable).with_name("specbuilder")
    for command in ([sys.executable, "-m", "specbuilder"], [str(script)]):
        done = subprocess.run([*command, "validate", str(bad)], capture_output=True, text=True)
        assert done.returncode == 1
        assert done.stderr.splitlines()[0] == f"{bad}: layers[1].negative_slope: must be >= 0, got -1"
        assert "Traceback" not in done.stderr


def test_validate_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom specbuilder.cli import main\n"
        f"assert main(['validate', {TUTORIAL!r}]) == 0\nassert main(['schema']) == 0\nassert main(['activations']) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
