"""TensorBoard event files: ``EventWriter`` on a real run, ``train --tensorboard``, ``models tensorboard``.

Every file is read back with TensorBoard's own reader (the plugin event accumulator its server
uses), and every value is compared with what the run reported: scalars as float32 (TensorBoard's
scalar type), histograms bin for bin (edges and counts exactly). Trainings are tiny (spirals, 2
epochs of 13 steps, on the CPU).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel
from tensorboard.backend.event_processing.plugin_event_accumulator import TENSORS, EventAccumulator
from tensorboard.util import tensor_util

from server_helpers import serving
from specbuilder.store import ModelStore
from specbuilder.tensorboard import EventWriter, TensorBoardError
from specbuilder.training import EpochEvent, FinishedEvent, StatsEvent, train_events
from specbuilder_client import Client
from test_cli_train import QUICK, SPEC, run


@dataclass
class Board:
    """What TensorBoard reads in a directory: scalars and histograms by tag, then by step."""

    scalars: dict[str, dict[int, float]]
    histograms: dict[str, dict[int, np.ndarray]]

    def only(self, prefix: str) -> Board:
        """The tags under ``prefix/``."""
        return Board({t: v for t, v in self.scalars.items() if t.startswith(prefix + "/")},
                     {t: v for t, v in self.histograms.items() if t.startswith(prefix + "/")})


def read(directory: Path) -> Board:
    """The event files of ``directory`` through TensorBoard's reader; each tag must belong to the scalar or histogram plugin."""
    accumulator = EventAccumulator(str(directory), size_guidance={TENSORS: 0})
    accumulator.Reload()
    scalar_tags, histogram_tags = (set(accumulator.PluginTagToContent(plugin)) if plugin in accumulator.ActivePlugins() else set()
                                   for plugin in ("scalars", "histograms"))
    tags = accumulator.Tags()["tensors"]
    assert set(tags) == scalar_tags | histogram_tags and not scalar_tags & histogram_tags
    values = {tag: {event.step: tensor_util.make_ndarray(event.tensor_proto) for event in accumulator.Tensors(tag)} for tag in tags}
    scalars = {}
    for tag in scalar_tags:
        assert all(value.dtype == np.float32 and value.shape == () for value in values[tag].values())
        scalars[tag] = {step: float(value) for step, value in values[tag].items()}
    return Board(scalars, {tag: values[tag] for tag in histogram_tags})


def plain(item: BaseModel | Mapping[str, Any]) -> Mapping[str, Any]:
    return item.model_dump() if isinstance(item, BaseModel) else item


def expected_epochs(history: Iterable[BaseModel | Mapping[str, Any]]) -> Board:
    """``epoch/*`` as the run reported its epochs, each value as TensorBoard's float32."""
    scalars: dict[str, dict[int, float]] = {}
    for epoch in map(plain, history):
        for key in ("loss", "val_loss", "accuracy", "lr", "seconds"):
            if epoch.get(key) is not None:
                scalars.setdefault(f"epoch/{key}", {})[epoch["epoch"]] = float(np.float32(epoch[key]))
    return Board(scalars, {})


def expected_layers(prefix: str, windows: Sequence[tuple[int, Iterable[BaseModel | Mapping[str, Any]]]]) -> Board:
    """``prefix/LAYER/*`` for statistics reported at each step: the histogram's bins exactly, fractions and grad norm as float32."""
    board = Board({}, {})
    for step, layers in windows:
        for layer in map(plain, layers):
            name = f"{prefix}/{layer['name']}"
            edges, counts = layer["histogram"]["edges"], layer["histogram"]["counts"]
            board.histograms.setdefault(f"{name}/activations", {})[step] = np.array([edges[:-1], edges[1:], counts], dtype=np.float64).T
            for key in ("dead_fraction", "saturated_fraction", "grad_norm"):
                if layer.get(key) is not None:
                    board.scalars.setdefault(f"{name}/{key}", {})[step] = float(np.float32(layer[key]))
    return board


def merged(*boards: Board) -> Board:
    return Board({t: v for b in boards for t, v in b.scalars.items()}, {t: v for b in boards for t, v in b.histograms.items()})


def assert_same(found: Board, expected: Board) -> None:
    """The same tags, steps and values; histograms bit for bit."""
    assert found.scalars == expected.scalars
    assert found.histograms.keys() == expected.histograms.keys()
    for tag, steps in expected.histograms.items():
        assert found.histograms[tag].keys() == steps.keys(), tag
        for step, buckets in steps.items():
            assert found.histograms[tag][step].dtype == np.float64
            np.testing.assert_array_equal(found.histograms[tag][step], buckets, err_msg=f"{tag} at step {step}")


def event_files(directory: Path) -> list[str]:
    return [path.name for path in directory.iterdir() if "tfevents" in path.name] if directory.is_dir() else []


# -- EventWriter ----------------------------------------------------------------------------------


def test_a_run_written_as_it_trains_reads_back_exactly(tmp_path: Path) -> None:
    history, windows = [], []
    with EventWriter(tmp_path / "run") as board:
        for event in train_events(SPEC, "spirals", {"epochs": 2, "stats_every": 5, "device": "cpu"}):
            if isinstance(event, EpochEvent):
                board.epoch(event.metrics)
                history.append(event.metrics)
            elif isinstance(event, StatsEvent):
                board.window(event.step, event.layers)
                windows.append((event.step, event.layers))
            elif isinstance(event, FinishedEvent):
                board.final(len(history), event.result.stats)
                final = event.result.stats
    found = read(tmp_path / "run")
    assert_same(found, merged(expected_epochs(history), expected_layers("train", windows), expected_layers("final", [(2, final)])))
    assert [step for step, _ in windows] == [5, 10, 15, 20, 25]
    assert set(found.scalars["epoch/val_loss"]) == {1, 2} and "train/relu_1/grad_norm" in found.scalars
    assert "final/relu_1/grad_norm" not in found.scalars  # the final pass has no backward
    assert len(event_files(tmp_path / "run")) == 1


def test_a_directory_with_event_files_is_refused_and_a_silent_writer_leaves_none(tmp_path: Path) -> None:
    with EventWriter(tmp_path / "new"):
        pass
    assert event_files(tmp_path / "new") == []
    with EventWriter(tmp_path / "new") as board:
        board.epoch({"epoch": 1, "loss": 0.5, "val_loss": None, "accuracy": None, "lr": 0.1, "seconds": 0.0})
    (name,) = event_files(tmp_path / "new")
    with pytest.raises(TensorBoardError, match=f"already holds TensorBoard event files \\({name}\\); TensorBoard would show both runs as one"):
        EventWriter(tmp_path / "new")
    (tmp_path / "file").write_text("")
    with pytest.raises(TensorBoardError, match="file/run: cannot use as an event directory: Not a directory"):
        EventWriter(tmp_path / "file" / "run")


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """``train --store --tensorboard``: the store, the model id and the event directory."""
    folder = tmp_path_factory.mktemp("tensorboard")
    (folder / "spec.json").write_text(json.dumps(SPEC))
    store, events = folder / "store", folder / "events"
    ran = run("train", folder / "spec.json", "--data", "spirals", *QUICK, "--store", store, "--tensorboard", events)
    assert ran.code == 0, ran.err
    assert ran.out[-1] == f"wrote TensorBoard events to {events}"
    return store, next(line for line in ran.out if line.startswith("model id: ")).split()[2], events


def test_train_writes_epochs_windows_and_the_final_statistics(trained: tuple[Path, str, Path]) -> None:
    store, model_id, events = trained
    with ModelStore(store) as opened:
        record = opened.get(model_id)
    found = read(events)
    assert_same(found.only("epoch"), expected_epochs(record.history))
    assert_same(found.only("final"), expected_layers("final", [(2, record.stats)]))
    # Windows every 10 steps (the default with --tensorboard) of 26, in each monitored layer's fixed bins.
    windows = found.only("train")
    assert {tag: sorted(steps) for tag, steps in windows.histograms.items()} == {
        "train/relu_1/activations": [10, 20], "train/tanh_3/activations": [10, 20]}
    for layer in record.stats:
        for buckets in windows.histograms[f"train/{layer['name']}/activations"].values():
            np.testing.assert_array_equal(buckets[:, 0], layer["histogram"]["edges"][:-1])
            assert buckets[:, 2].sum() > 0
        assert sorted(windows.scalars[f"train/{layer['name']}/grad_norm"]) == [10, 20]


def test_models_tensorboard_writes_what_the_store_keeps(trained: tuple[Path, str, Path], tmp_path: Path) -> None:
    store, model_id, events = trained
    ran = run("models", "tensorboard", model_id, tmp_path / "export", "--store", store)
    assert ran.code == 0, ran.err
    assert ran.out == [
        f"wrote 2 epochs (epoch/*) and the final statistics of 2 layers (final/*) of model {model_id} (spirals-mlp) to {tmp_path / 'export'}",
        "training windows (train/*) are not stored; specbuilder train --tensorboard DIR writes them as it trains"]
    live = read(events)
    assert_same(read(tmp_path / "export"), merged(live.only("epoch"), live.only("final")))
    again = run("models", "tensorboard", model_id, tmp_path / "export", "--store", store)
    assert again.code == 1 and again.err[0].startswith(f"{tmp_path / 'export'}: already holds TensorBoard event files")


def test_a_failed_runs_statistics_are_not_passed_off_as_final(trained: tuple[Path, str, Path], tmp_path: Path) -> None:
    store, model_id, _ = trained
    with ModelStore(store) as opened:
        done = opened.get(model_id)
        started = opened.start_run(done.spec, name="broken")
        opened.update_run(started.id, history=done.history[:1], stats=done.stats)
        opened.finish_run(started.id, "failed", reason="the disk went away")
    ran = run("models", "tensorboard", started.id, tmp_path / "failed", "--store", store)
    assert ran.code == 0, ran.err
    assert ran.out[:2] == [
        f"wrote 1 epoch (epoch/*) of model {started.id} (broken) to {tmp_path / 'failed'}",
        "final statistics not written: a failed run's record holds the statistics of its latest training window, whose step it does not keep"]
    assert_same(read(tmp_path / "failed"), expected_epochs(done.history[:1]))


def test_train_checks_the_directory_first_and_a_run_that_never_starts_writes_nothing(trained: tuple[Path, str, Path], tmp_path: Path) -> None:
    _, _, events = trained
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    ran = run("train", tmp_path / "spec.json", "--data", "spirals", *QUICK, "--tensorboard", events)
    assert (ran.code, ran.out) == (1, [])
    assert ran.err[0].startswith(f"{events}: already holds TensorBoard event files")
    ran = run("train", tmp_path / "spec.json", "--data", "spiralz", *QUICK, "--tensorboard", tmp_path / "never")
    assert ran.code == 1 and ran.err[0].startswith("data: unknown dataset")
    assert event_files(tmp_path / "never") == []


def test_remote_train_and_models_tensorboard(tmp_path: Path) -> None:
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    with serving(tmp_path / "store") as server:
        ran = run("train", tmp_path / "spec.json", "--data", "spirals", *QUICK, "--server", server.address, "--tensorboard", tmp_path / "live")
        assert ran.code == 0, ran.err
        model_id = next(line for line in ran.out if line.startswith("model id: ")).split()[2]
        exported = run("models", "tensorboard", model_id, tmp_path / "export", "--server", server.address)
        assert exported.code == 0, exported.err
        with Client(server.address) as client:
            record = client.get_model(model_id)
    assert record.history and record.stats
    stored = merged(expected_epochs(record.history), expected_layers("final", [(2, record.stats)]))
    assert_same(read(tmp_path / "export"), stored)
    live = read(tmp_path / "live")
    assert_same(merged(live.only("epoch"), live.only("final")), stored)
    assert {tag: sorted(steps) for tag, steps in live.only("train").histograms.items()} == {
        "train/relu_1/activations": [10, 20], "train/tanh_3/activations": [10, 20]}
