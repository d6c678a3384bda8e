"""``specbuilder train``, ``eval``, ``models`` and ``plot``, in-process and with ``--server``.

Trainings are tiny (spirals, 2 epochs of 13 steps). Outputs are checked against what the store
and the compiler give in this process, and remote runs against a real server on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from server_helpers import serving
from specbuilder.cli import build_parser, main
from specbuilder.compiler import compile_spec
from specbuilder.store import ModelStore
from specbuilder_server import RunningServer

SPEC = {
    "name": "spirals-mlp",
    "input_shape": [2],
    "layers": [
        {"type": "linear", "out_features": 16, "name": "fc1", "activation": "relu"},
        {"type": "linear", "out_features": 16, "name": "fc2", "activation": "tanh"},
        {"type": "linear", "out_features": 2, "name": "out"},
    ],
}
SINE = {"name": "sine-mlp", "input_shape": [1], "layers": [{"type": "linear", "out_features": 8, "activation": "tanh"}, {"type": "linear", "out_features": 1}]}
QUICK = ["--epochs", "2", "--quiet", "--device", "cpu"]
"""Two epochs of 13 steps, on the CPU so that numbers compare exactly on any machine."""
X = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
MISSING_ID = "0" * 32


@dataclass
class Ran:
    code: int
    out: list[str]
    err: list[str]


def run(*argv: str | Path) -> Ran:
    """``main(argv)`` with its stdout and stderr captured as lines."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(arg) for arg in argv])
    return Ran(code, out.getvalue().splitlines(), err.getvalue().splitlines())


def section(lines: list[str], header_start: str) -> list[list[str]]:
    """The rows (split on whitespace) of the table whose header line starts with ``header_start``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line[:1].isdigit():
            break
        rows.append(line.split())
    return rows


def assert_png(path: Path, min_width: int = 400, min_height: int = 300) -> None:
    """A real PNG of a size a person can read."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert min_width <= width <= 5000 and min_height <= height <= 5000, image.size


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "spec.json").write_text(json.dumps(SPEC))
    (folder / "sine.json").write_text(json.dumps(SINE))
    np.save(folder / "x.npy", X)
    return folder


@dataclass
class Trained:
    ran: Ran
    store: Path
    model_id: str
    plot: Path


@pytest.fixture(scope="module")
def trained(folder: Path) -> Trained:
    """One local training run, saved to a store and plotted."""
    store, plot = folder / "store", folder / "train.png"
    ran = run("train", folder / "spec.json", "--data", "spirals", *QUICK, "--store", store, "--plot", plot, "--name", "first")
    assert ran.code == 0, ran.err
    model_id = next(line for line in ran.out if line.startswith("model id: ")).split()[2]
    return Trained(ran, store, model_id, plot)


# -- train --------------------------------------------------------------------------------------


def test_train_prints_the_epoch_and_layer_tables_and_stores_the_model(trained: Trained) -> None:
    out = trained.ran.out
    assert out[0].startswith("training spirals-mlp (354 parameters) on spirals: 800 training / 200 validation samples, 13 steps per epoch")
    epochs = section(out, "epoch ")
    assert [row[0] for row in epochs] == ["1", "2"]
    layers = section(out, "#  layer")
    assert [(row[1], row[2]) for row in layers] == [("relu_1", "relu"), ("tanh_3", "tanh")]
    assert all(row[3].endswith("%") and row[4].endswith("%") and row[5].endswith("%") for row in layers)
    assert all(row[-1] != "-" for row in layers), "grad norms come from the last training window"
    assert "completed: trained 2 epochs (26 steps)" in out
    with ModelStore(trained.store) as store:
        record = store.get(trained.model_id)
    assert (record.name, record.status, record.dataset, record.config["epochs"]) == ("first", "completed", "spirals", 2)
    assert [epoch["epoch"] for epoch in record.history] == [1, 2]
    assert [layer["name"] for layer in record.stats] == ["relu_1", "tanh_3"]
    final = next(line for line in out if line.startswith("final model on the validation set"))
    assert f"accuracy {100 * record.history[-1]['accuracy']:.1f}%" in final
    assert epochs[-1][3] == f"{100 * record.history[-1]['accuracy']:.1f}%"


def test_train_plot_is_a_png(trained: Trained) -> None:
    assert f"wrote {trained.plot}" in trained.ran.out
    assert_png(trained.plot)


def test_without_a_store_nothing_is_saved_and_the_run_matches(folder: Path, trained: Trained) -> None:
    ran = run("train", folder / "spec.json", "--data", "spirals", *QUICK)
    assert ran.code == 0
    assert not any(line.startswith("model id") for line in ran.out)
    # Same spec, data and seed: the same losses, accuracies and rates (only the seconds differ).
    assert [row[:5] for row in section(ran.out, "epoch ")] == [row[:5] for row in section(trained.ran.out, "epoch ")]


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("terminal", "quiet"), [(True, False), (True, True), (False, False)])
def test_the_progress_bar_shows_on_a_terminal_unless_quiet(folder: Path, terminal: bool, quiet: bool) -> None:
    err = Terminal() if terminal else io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(["train", str(folder / "spec.json"), "--data", "spirals", "--epochs", "2", "--device", "cpu", *(["--quiet"] if quiet else [])])
    assert code == 0
    shown = err.getvalue()
    if terminal and not quiet:
        assert "training:   0%" in shown and "0/2 [" in shown  # later redraws depend on tqdm's refresh interval
    else:
        assert shown == ""


@pytest.mark.parametrize(("argv", "config", "errors"), [
    (["--epochs", "0", "--lr", "-1", "--optimizer", "adamw2"], None,
     ["epochs: must be >= 1, got 0", "lr: must be > 0, got -1", "optimizer: unknown optimizer 'adamw2'; did you mean 'adamw'?"]),
    (["--epochs", "1"], {"epochs": 0, "optimizer": {"type": "sgd", "momentum": 1.5}}, ["optimizer.momentum: must be < 1, got 1.5"]),
    (["--device", "tpu"], None, ["device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"]),
])
def test_config_errors_are_path_message_lines(folder: Path, tmp_path: Path, argv: list[str], config: dict | None, errors: list[str]) -> None:
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
        argv = [*argv, "--config", str(tmp_path / "config.json")]
    ran = run("train", folder / "spec.json", "--data", "spirals", *argv)
    assert (ran.code, ran.out, ran.err) == (1, [], errors)


def test_unreadable_config_files(folder: Path, tmp_path: Path) -> None:
    broken, listed = tmp_path / "broken.json", tmp_path / "list.json"
    broken.write_text('{"epochs": ')
    listed.write_text("[1]")
    assert run("train", folder / "spec.json", "--data", "spirals", "--config", broken).err == [
        f"{broken}: invalid JSON: Expecting value at line 1 column 12"]
    assert run("train", folder / "spec.json", "--data", "spirals", "--config", listed).err == [
        f"{listed}: a training config is a JSON object, got list"]
    missing = tmp_path / "missing.json"
    assert run("train", folder / "spec.json", "--data", "spirals", "--config", missing).err == [
        f"{missing}: cannot read: No such file or directory"]


def test_data_errors(folder: Path, tmp_path: Path) -> None:
    ran = run("train", folder / "spec.json", "--data", "spiralz", *QUICK)
    assert ran.code == 1
    assert ran.err[0].startswith("data: unknown dataset 'spiralz'; did you mean 'spirals'?")
    assert run("train", folder / "spec.json", "--data", tmp_path / "none.npz").err == [f"data: no such file: {tmp_path / 'none.npz'}"]
    ran = run("train", folder / "spec.json", "--data", "digits", *QUICK)
    assert ran.code == 1
    assert ran.err[0].startswith("data: expected 2 features per sample; the spec's input_shape is [2], the data has shape [1797, 64]")


def test_train_on_an_npz_file(folder: Path, tmp_path: Path) -> None:
    path = tmp_path / "points.npz"
    np.savez(path, x=X, y=(X[:, 0] > 0).astype(np.int64))
    ran = run("train", folder / "spec.json", "--data", path, *QUICK)
    assert ran.code == 0, ran.err
    assert ran.out[0].startswith("training spirals-mlp (354 parameters) on points: 32 training / 8 validation samples")


def test_a_bad_name_or_plot_folder_fails_before_training(folder: Path, tmp_path: Path) -> None:
    ran = run("train", folder / "spec.json", "--data", "spirals", *QUICK, "--store", tmp_path / "s", "--name", "bad name")
    assert (ran.code, ran.out) == (1, [])
    assert ran.err[0].startswith("--name: a model name is 1 to 64 characters")
    ran = run("train", folder / "spec.json", "--data", "spirals", *QUICK, "--plot", tmp_path / "no" / "p.png")
    assert (ran.code, ran.out, ran.err) == (1, [], [f"{tmp_path / 'no' / 'p.png'}: no such directory: {tmp_path / 'no'}"])


def test_a_diverged_run_is_stored_as_such_and_exits_1(folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    ran = run("train", folder / "sine.json", "--data", "sine", "--optimizer", "sgd", "--lr", "1e30", *QUICK, "--store", store)
    assert ran.code == 1
    assert ran.err == ["training diverged: loss became inf at step 2 (epoch 1); lower lr or set grad_clip"]
    with ModelStore(store) as opened:
        (record,) = opened.list()
    assert (record.status, record.reason) == ("diverged", "loss became inf at step 2 (epoch 1); lower lr or set grad_clip")
    assert not record.has_weights and list((store / "weights").iterdir()) == [], "a diverged model's weights are not kept"


def test_a_run_cancelled_before_its_first_step_is_stored_without_weights(folder: Path, tmp_path: Path) -> None:
    """Its weights would be the initialization: a file of them only takes room."""
    store, config = tmp_path / "store", tmp_path / "config.json"
    config.write_text(json.dumps({"max_seconds": 1e-9}))
    ran = run("train", folder / "sine.json", "--data", "sine", "--config", config, *QUICK, "--store", store)
    with ModelStore(store) as opened:
        (record,) = opened.list()
    assert (record.status, record.reason, record.has_weights) == ("cancelled", "time limit of 1e-09 s reached after 0 steps", False)
    assert list((store / "weights").iterdir()) == []
    assert f"model id: {record.id} (saved in {store})" in ran.out


# -- eval ---------------------------------------------------------------------------------------


def test_eval_of_a_stored_model_equals_loading_it(folder: Path, trained: Trained, tmp_path: Path) -> None:
    out = tmp_path / "out.npy"
    ran = run("eval", "--model", trained.model_id, "--store", trained.store, "--input", folder / "x.npy", "--stats", "--output", out,
              "--device", "cpu")
    assert ran.code == 0, ran.err
    assert ran.out[0] == f"{trained.model_id} (spirals-mlp): input [40, 2] -> output [40, 2] float32"
    with ModelStore(trained.store) as store:
        module = store.load(trained.model_id, "cpu").eval()
    with torch.inference_mode():
        expected = module(torch.from_numpy(X)).numpy()
    np.testing.assert_array_equal(np.load(out), expected)
    counts = np.bincount(expected.argmax(1), minlength=2)
    assert ran.out[2] == "predicted class (argmax): " + ", ".join(f"{c}: {n} ({100 * n / 40:.1f}%)" for c, n in enumerate(counts) if n)
    layers = section(ran.out, "#  layer")
    assert [row[1] for row in layers] == ["relu_1", "tanh_3"]
    with torch.inference_mode():
        hidden = torch.tanh(module.fc2(torch.relu(module.fc1(torch.from_numpy(X)))))
    assert float(layers[1][8]) == pytest.approx(float(hidden.min()), abs=1e-3)  # the min column of tanh_3


def test_eval_of_a_spec_uses_the_seed(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.npy"
    assert run("eval", folder / "spec.json", "--input", folder / "x.npy", "--seed", "7", "--output", out, "--device", "cpu").code == 0
    module = compile_spec(SPEC, device="cpu", seed=7).eval()
    with torch.inference_mode():
        np.testing.assert_array_equal(np.load(out), module(torch.from_numpy(X)).numpy())


@pytest.mark.parametrize(("amp", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_eval_with_amp_runs_the_forward_under_autocast(folder: Path, tmp_path: Path, amp: str, dtype: torch.dtype) -> None:
    out = tmp_path / "out.npy"
    ran = run("eval", folder / "spec.json", "--input", folder / "x.npy", "--amp", amp, "--output", out, "--device", "cpu", "--stats")
    assert ran.code == 0, ran.err
    module = compile_spec(SPEC, device="cpu", seed=0).eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
        expected = module(torch.from_numpy(X))
    assert expected.dtype == dtype  # the half type really reached the output
    np.testing.assert_array_equal(np.load(out), expected.float().numpy() if dtype == torch.bfloat16 else expected.numpy())
    assert [row[1] for row in section(ran.out, "#  layer")] == ["relu_1", "tanh_3"]


@pytest.mark.parametrize(("array", "error"), [
    (np.zeros((5, 3), np.float32), "expected [N, 2] (a batch of the spec's input_shape [2]), got [5, 3]: "
                                   "each sample has 3 elements but the spec's input_shape needs 2; "
                                   "send the data the model was built for, or change its input_shape"),
    (np.zeros(2, np.float32), "expected [N, 2] (a batch of the spec's input_shape [2]), got [2]: "
                              "add the batch dimension: shape [1, 2] for one sample"),
    (np.zeros((4, 1, 2), np.float32), "expected [N, 2] (a batch of the spec's input_shape [2]), got [4, 1, 2]: "
                                      "reshape it to [4, 2], or set the spec's input_shape to [1, 2]"),
    (np.zeros((0, 2), np.float32), "the batch is empty ([0, 2]); send at least one sample"),
    (np.array(["a", "b"]), "must hold numbers, got dtype <U1"),
])
def test_eval_input_errors_say_what_to_do(folder: Path, tmp_path: Path, array: np.ndarray, error: str) -> None:
    path = tmp_path / "in.npy"
    np.save(path, array)
    assert run("eval", folder / "spec.json", "--input", path).err == [f"{path}: {error}"]


def test_eval_model_errors(folder: Path, trained: Trained, tmp_path: Path) -> None:
    x = folder / "x.npy"
    assert run("eval", "--model", "0123", "--store", trained.store, "--input", x).err == [
        "--model: a model id is 32 lowercase hexadecimal digits, as returned by save or start_run; got '0123'"]
    assert run("eval", "--model", MISSING_ID, "--store", trained.store, "--input", x).err == [
        f"--model: no model or run with id {MISSING_ID} in the store"]
    assert run("eval", "--model", MISSING_ID, "--store", tmp_path / "none", "--input", x).err == [
        f"no model store at {tmp_path / 'none'}: pass --store DIR or set SPECBUILDER_STORE"]
    assert not (tmp_path / "none").exists()
    assert run("eval", "--model", trained.model_id, "--store", trained.store, "--input", x, "--seed", "1").err == [
        "--seed: only with a SPEC (a stored model has its trained weights)"]
    assert run("eval", folder / "spec.json", "--model", trained.model_id, "--input", x).code == 2


# -- models -------------------------------------------------------------------------------------


def test_models_list_and_show(trained: Trained) -> None:
    ran = run("models", "list", "--store", trained.store)
    assert ran.code == 0
    assert ran.out[0].split() == ["id", "name", "status", "params", "created", "accuracy"]
    with ModelStore(trained.store) as store:
        record = store.get(trained.model_id)
    row = next(line.split() for line in ran.out if line.startswith(trained.model_id))
    assert row[:4] == [trained.model_id, "first", "completed", "354"]
    assert row[-1] == f"{100 * record.history[-1]['accuracy']:.1f}%"
    shown = run("models", "show", trained.model_id, "--store", trained.store)
    assert shown.code == 0
    assert shown.out[:3] == [f"id:       {trained.model_id}", "name:     first", "status:   completed (trained 2 epochs (26 steps))"]
    assert "  epochs: 2" in shown.out
    assert [row[0] for row in section(shown.out, "epoch ")] == ["1", "2"]
    assert [row[1] for row in section(shown.out, "#  layer")] == ["relu_1", "tanh_3"]
    assert run("models", "list", "--store", trained.store, "--status", "diverged").out == [f"no models in {trained.store} with status diverged"]


def test_models_rm(folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    ran = run("train", folder / "spec.json", "--data", "spirals", "--epochs", "1", "--quiet", "--device", "cpu", "--store", store)
    model_id = next(line for line in ran.out if line.startswith("model id: ")).split()[2]
    assert run("models", "rm", model_id, "--store", store).out == [f"deleted model {model_id} (spirals-mlp)"]
    assert run("models", "list", "--store", store).out == [f"no models in {store}"]
    assert run("models", "rm", model_id, "--store", store).err == [f"models rm: no model or run with id {model_id} in the store"]


@pytest.mark.parametrize("argv", [["show", "nope"], ["rm", "../../etc"]])
def test_models_malformed_ids(trained: Trained, argv: list[str]) -> None:
    ran = run("models", *argv, "--store", trained.store)
    assert ran.code == 1
    assert ran.err == [f"models {argv[0]}: a model id is 32 lowercase hexadecimal digits, as returned by save or start_run; got {argv[1]!r}"]


def test_models_usage(trained: Trained) -> None:
    assert run("models").code == 2
    ran = run("models", "list", "--store", trained.store, "--status", "bogus")
    assert ran.err == ["--status: status must be one of running, completed, failed, cancelled, diverged, interrupted; got 'bogus'"]


def test_the_new_commands_are_registered() -> None:
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert {"train", "eval", "models", "plot"} <= set(commands)


# -- plot ---------------------------------------------------------------------------------------


def test_plot_model_draws_the_stored_histograms(trained: Trained, tmp_path: Path) -> None:
    path = tmp_path / "model.png"
    ran = run("plot", "model", trained.model_id, path, "--store", trained.store)
    assert (ran.code, ran.out) == (0, [f"wrote {path}"])
    assert_png(path, min_width=300, min_height=200)


def test_plot_atlas_cli(tmp_path: Path) -> None:
    from specbuilder.activations import ACTIVATIONS

    path = tmp_path / "atlas.png"
    ran = run("plot", "atlas", path)
    assert ran.out == [f"wrote {path}", f"{len(ACTIVATIONS)} activations: f(x) solid, f'(x) dashed, flat regions shaded"]
    assert_png(path, min_width=1000, min_height=800)
    assert run("plot", "atlas", tmp_path / "no" / "a.png").err == [f"{tmp_path / 'no' / 'a.png'}: no such directory: {tmp_path / 'no'}"]


# -- --server -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("served")) as running:
        yield running


def test_remote_train_eval_show_and_rm(folder: Path, remote: RunningServer, trained: Trained, tmp_path: Path) -> None:
    plot = tmp_path / "remote.png"
    ran = run("train", folder / "spec.json", "--data", "spirals", *QUICK, "--server", remote.address, "--name", "far", "--plot", plot)
    assert ran.code == 0, ran.err
    model_id = next(line for line in ran.out if line.startswith("model id: ")).split()[2]
    assert ran.out[-2:] == [f"model id: {model_id} (stored on {remote.address})", f"wrote {plot}"]
    assert_png(plot)
    # Same seed, same data: the server's run reads like the local one.
    assert [row[:5] for row in section(ran.out, "epoch ")] == [row[:5] for row in section(trained.ran.out, "epoch ")]
    assert [row[1] for row in section(ran.out, "#  layer")] == ["relu_1", "tanh_3"]

    out = tmp_path / "out.npy"
    ran = run("eval", "--model", model_id, "--input", folder / "x.npy", "--output", out, "--stats", "--server", remote.address)
    assert ran.code == 0, ran.err
    with ModelStore(remote.config.store) as store:
        module = store.load(model_id, "cpu").eval()
    with torch.inference_mode():
        np.testing.assert_allclose(np.load(out), module(torch.from_numpy(X)).numpy(), rtol=1e-6, atol=1e-6)
    assert [row[1] for row in section(ran.out, "#  layer")] == ["relu_1", "tanh_3"]
    half, remote_half = tmp_path / "half.npy", tmp_path / "remote-half.npy"
    assert run("eval", "--model", model_id, "--store", remote.config.store, "--input", folder / "x.npy", "--amp", "bf16", "--output", half,
               "--device", "cpu").code == 0
    assert run("eval", "--model", model_id, "--input", folder / "x.npy", "--amp", "bf16", "--output", remote_half, "--server", remote.address).code == 0
    np.testing.assert_array_equal(np.load(remote_half), np.load(half))  # the server's autocast is the local one

    listed = run("models", "list", "--server", remote.address)
    assert next(line.split() for line in listed.out if line.startswith(model_id))[:4] == [model_id, "far", "completed", "354"]
    shown = run("models", "show", model_id, "--server", remote.address)
    assert shown.out[:2] == [f"id:       {model_id}", "name:     far"]
    picture = tmp_path / "far.png"
    assert run("plot", "model", model_id, picture, "--server", remote.address).out == [f"wrote {picture}"]
    assert_png(picture, min_width=300, min_height=200)
    assert run("models", "rm", model_id, "--server", remote.address).out == [f"deleted model {model_id} (far)"]
    assert run("models", "show", model_id, "--server", remote.address).err == [
        f"server {remote.address}: no model or run with id {model_id} in the store"]


def test_eval_of_a_spec_on_a_server_uses_the_seed_as_here(folder: Path, remote: RunningServer, tmp_path: Path) -> None:
    here, there, default = tmp_path / "here.npy", tmp_path / "there.npy", tmp_path / "default.npy"
    x = folder / "x.npy"
    assert run("eval", folder / "spec.json", "--input", x, "--seed", "7", "--output", here, "--device", "cpu").code == 0
    assert run("eval", folder / "spec.json", "--input", x, "--seed", "7", "--output", there, "--server", remote.address).code == 0
    assert run("eval", folder / "spec.json", "--input", x, "--output", default, "--server", remote.address).code == 0
    np.testing.assert_allclose(np.load(there), np.load(here), rtol=1e-6, atol=1e-6)  # the same weights; kernels may round apart
    assert not np.allclose(np.load(default), np.load(here))
    assert run("eval", "--model", MISSING_ID, "--input", x, "--seed", "1", "--server", remote.address).err == [
        "--seed: only with a SPEC (a stored model has its trained weights)"]


def test_remote_compile_and_errors(folder: Path, remote: RunningServer, tmp_path: Path) -> None:
    ran = run("compile", folder / "spec.json", "--server", remote.address)
    assert ran.code == 0
    assert ran.out[0] == f"{folder / 'spec.json'}: spirals-mlp, style sequential, compiled on {remote.address}"
    assert ran.out[-1] == "input [N, 2] -> output [N, 2], 354 parameters"
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 5), np.float32))
    assert run("eval", "--model", MISSING_ID, "--input", bad, "--server", remote.address).err == [
        f"server {remote.address}: no model or run with id {MISSING_ID} in the store"]
    assert run("eval", folder / "spec.json", "--input", bad, "--server", remote.address).err[0].startswith(f"{bad}: expected [N, 2]")
    assert run("train", folder / "spec.json", "--data", "spirals", "--epochs", "0", "--server", remote.address).err == [
        "epochs: must be >= 1, got 0"]
    assert run("train", folder / "spec.json", "--data", "spirals", "--server", remote.address, "--store", tmp_path).err == [
        "--store: not with --server (the server keeps its own store)"]


def test_remote_token_and_unreachable_server(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPECBUILDER_TOKEN", raising=False)
    with serving(tmp_path / "store", tokens=("s3cret",)) as guarded:
        ran = run("models", "list", "--server", guarded.address)
        assert ran.code == 1
        assert ran.err[-1] == "pass --token-file or --token, or set SPECBUILDER_TOKEN"
        assert run("models", "list", "--server", guarded.address, "--token", "s3cret").out == [f"no models in {guarded.address}"]
        monkeypatch.setenv("SPECBUILDER_TOKEN", "s3cret")
        assert run("models", "list", "--server", guarded.address).code == 0
    ran = run("models", "list", "--server", guarded.address)
    assert ran.code == 1
    assert ran.err[-1] == f"is `specbuilder serve` running at {guarded.address}?"
