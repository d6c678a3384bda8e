"""``specbuilder demo`` end to end, reduced to two epochs: a real server subprocess, the client, the table, the PNG."""

from __future__ import annotations

from pathlib import Path

import pytest

from specbuilder.cli import main
from specbuilder.demo.experiment import ACTIVATIONS, hidden_fractions, tutorial_spec
from specbuilder.demo.server import ServerProcessError, serve_subprocess
from specbuilder.spec import parse_spec
from specbuilder_client import Histogram, LayerStats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def table_rows(out: list[str]) -> dict[str, list[str]]:
    """The demo table's rows by activation label: the cells after the label."""
    header = next(i for i, line in enumerate(out) if line.startswith("activation"))
    rows: dict[str, list[str]] = {}
    for line in out[header + 2:]:
        if not line.strip():
            break
        label = next(label for label, _ in sorted(ACTIVATIONS, key=lambda item: -len(item[0])) if line.startswith(label))
        rows[label] = line[len(label):].split()
    return rows


def test_reduced_demo_prints_one_row_per_activation_and_writes_the_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    picture = tmp_path / "nested" / "demo.png"
    code = main(["demo", "--epochs", "2", "--out", str(picture)])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert code == 0, err
    assert lines[0].startswith("server: `specbuilder serve` in a subprocess (pid ")
    assert lines[-1] == f"wrote {picture}"
    assert any(line.startswith("server stopped cleanly (exit 0)") for line in lines)
    rows = table_rows(lines)
    assert list(rows) == [label for label, _ in ACTIVATIONS]
    for label, cells in rows.items():
        accuracy, dead, saturated, grad = cells
        assert accuracy.endswith("%") and 0 <= float(accuracy[:-1]) <= 100, label
        assert 0 <= float(dead) <= 100 and 0 <= float(saturated) <= 100, label
        assert float(grad) >= 0, label
    # What the tutorials teach, exactly, whatever the training length: a step has no gradient
    # (flat everywhere, so every unit counts dead and saturated); its straight-through form and
    # identity have no flat region at all.
    assert rows["step"][1:] == ["100.0", "100.0", "0"]
    assert rows["step (ste)"][1:3] == ["0.0", "0.0"] and float(rows["step (ste)"][3]) > 0
    assert rows["identity"][1:3] == ["0.0", "0.0"]
    assert picture.read_bytes()[:8] == PNG_MAGIC


def test_demo_refuses_zero_epochs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["demo", "--epochs", "0", "--out", str(tmp_path / "x.png")]) == 1
    assert capsys.readouterr().err.splitlines() == ["demo: --epochs must be >= 1"]


@pytest.mark.parametrize("label, activation", ACTIVATIONS)
def test_every_tutorial_network_is_valid(label: str, activation: dict[str, object]) -> None:
    spec = parse_spec(tutorial_spec(label, activation))
    assert list(spec.input_shape) == [2]
    assert [node.name for node in spec.nodes] == ["fc1", "act1", "fc2", "act2", "logits"]


def test_hidden_fractions_weigh_layers_by_their_elements() -> None:
    def layer(count: int, dead: float, saturated: float) -> LayerStats:
        return LayerStats(index=0, name="a", kind="relu", count=count, mean=0, std=0, min=0, max=0, nan_count=0, inf_count=0,
                          zero_fraction=0, saturated_fraction=saturated, dead_fraction=dead, units=4,
                          histogram=Histogram(scale="linear", edges=[0.0, 1.0], counts=[count]), grad_norm=None,
                          entropy=None, max_probability=None)

    assert hidden_fractions([layer(100, 0.5, 1.0), layer(300, 0.1, 0.0)]) == pytest.approx((0.2, 0.25))
    assert hidden_fractions([]) == (0.0, 0.0)


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.write_text("a file, not a folder")
    with pytest.raises(ServerProcessError, match="the server did not start") as caught:
        with serve_subprocess(store):
            pass
    assert "model store" in str(caught.value)
