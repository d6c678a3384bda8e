"""The model store: round trips, runs, id safety, crash safety (SIGKILL), failed writes, threads."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel

import specbuilder
from specbuilder.builder import SpecBuilder
from specbuilder.compiler import compile_spec
from specbuilder.store import ModelNotFound, ModelStore, NoWeights, StoreError, files
from specbuilder.store.model_store import SCHEMA_VERSION
from stores import stored_weights

MLP: dict[str, Any] = SpecBuilder([12], name="mlp").linear(16, name="fc1", activation="relu").linear(3, name="fc2").to_dict()
CNN: dict[str, Any] = (
    SpecBuilder([1, 8, 8], name="cnn").conv2d(4, 3, padding=1).batch_norm2d().prelu().max_pool2d(2).flatten()
    .linear(5, activation="tanh").to_dict()
)
BAD_IDS = ["../../etc/passwd", "/etc/passwd", "a" * 31 + "\x00", "", "A" * 32, "0" * 33, "0" * 31 + "\n", 7, None]


@pytest.fixture
def store(open_store: Callable[..., ModelStore]) -> ModelStore:
    """A fresh store of each backend in turn: the contract every backend keeps."""
    return open_store()


@pytest.fixture
def directory_store(tmp_path: Path) -> Iterator[ModelStore]:
    """A directory store, for what only it has: SQLite, the weights files' names, the flocks."""
    with ModelStore(tmp_path / "store") as opened:
        yield opened


def trained(spec: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """A compiled model whose batch-norm buffers have moved off their initial values."""
    model = compile_spec(spec, device="cpu", seed=seed)
    with torch.no_grad():
        model.train()(torch.randn(4, *spec["input_shape"], generator=torch.Generator().manual_seed(seed)))
    return model


def assert_same_weights(left: torch.nn.Module, right: torch.nn.Module) -> None:
    a, b = left.state_dict(), right.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key].cpu(), b[key].cpu()), key


def weight_files(root: Path) -> set[str]:
    return {path.name for path in (root / "weights").iterdir()}


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["sequential", "functional"])
@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_save_then_load_gives_the_same_weights_and_outputs(store: ModelStore, spec: dict[str, Any], style: str) -> None:
    model = trained(spec).eval()
    record = store.save(model)
    loaded = store.load(record.id, device="cpu", style=style).eval()
    assert_same_weights(model, loaded)
    x = torch.randn(5, *spec["input_shape"])
    assert torch.equal(loaded(x), model(x))
    assert (record.name, record.status, record.has_weights) == (spec["name"], "completed", True)
    assert record.num_params == model.spec.num_params and record.spec_hash == model.spec.spec_hash()
    assert store.get(record.id) == record


def test_a_state_dict_with_its_spec_saves_and_keeps_its_dtype(store: ModelStore) -> None:
    model = compile_spec(MLP, device="cpu", dtype="float64", seed=3)
    record = store.save(model.state_dict(), MLP, name="double")
    loaded = store.load(record.id, device="cpu")
    assert record.name == "double" and next(loaded.parameters()).dtype == torch.float64
    assert_same_weights(model, loaded)


def test_export_gives_the_spec_and_numpy_weights(store: ModelStore) -> None:
    model = trained(CNN)
    spec, arrays = store.export(store.save(model).id)
    assert spec == model.spec
    state = model.state_dict()
    assert arrays.keys() == state.keys()
    for key, array in arrays.items():
        assert isinstance(array, np.ndarray) and np.array_equal(array, state[key].numpy()), key


def test_bfloat16_weights_load_as_bfloat16_and_export_as_float32(store: ModelStore) -> None:
    model = compile_spec(MLP, device="cpu", dtype="bfloat16", seed=2)
    record = store.save(model)
    assert_same_weights(model, store.load(record.id, device="cpu"))
    _, arrays = store.export(record.id)
    assert arrays["fc1.weight"].dtype == np.float32
    assert np.array_equal(arrays["fc1.weight"], model.fc1.weight.detach().float().numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_onto_cuda(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 convolutions (cuDNN's default) are not float32's rounding
    model = trained(CNN).eval()
    loaded = store.load(store.save(model).id, device="cuda").eval()
    assert next(loaded.parameters()).device.type == "cuda"
    assert_same_weights(model, loaded)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(loaded(x.cuda()).cpu(), model(x))


def test_weights_that_do_not_match_the_spec_are_refused_with_every_problem(store: ModelStore) -> None:
    state = compile_spec(MLP, device="cpu").state_dict()
    state["fc2.weight"] = torch.zeros(4, 16)
    del state["fc1.bias"]
    state["extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as caught:
        store.save(state, MLP)
    assert str(caught.value) == (
        "the weights do not match spec 'mlp': missing fc1.bias; unexpected extra; "
        "fc2.weight has shape [4, 16], the spec needs [3, 16]"
    )
    with pytest.raises(ValueError, match="no spec given"):
        store.save(state)
    assert store.list() == [] and stored_weights(store) == set()


def test_the_training_record_is_kept_as_json(store: ModelStore) -> None:
    class Config(BaseModel):
        lr: float
        epochs: int

    history = [{"epoch": 0, "loss": np.float32(0.5)}, {"epoch": 1, "loss": float("nan")}]
    stats = [{"layer": "relu_1", "dead_fraction": 0.25, "histogram": np.arange(3)}]
    record = store.save(compile_spec(MLP, device="cpu"), config=Config(lr=0.1, epochs=2), history=history,
                        stats=stats, dataset={"name": "digits", "rows": 1797}, status="diverged", reason="loss became NaN")
    got = store.get(record.id)
    assert got.config == {"lr": 0.1, "epochs": 2} and got.dataset == {"name": "digits", "rows": 1797}
    assert got.history[0] == {"epoch": 0, "loss": 0.5} and np.isnan(got.history[1]["loss"])
    assert got.stats == [{"layer": "relu_1", "dead_fraction": 0.25, "histogram": [0, 1, 2]}]
    assert (got.status, got.reason) == ("diverged", "loss became NaN")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"config": [1, 2]}, "config must be a dict"),
        ({"history": {"loss": 1}}, "history must be a list of dicts"),
        ({"stats": [object()]}, "stats must be JSON data"),
        ({"dataset": 3}, "dataset must be a name, a dict or None"),
        ({"status": "running"}, "status must be one of completed, failed, cancelled, diverged, interrupted"),
        ({"name": "../x"}, "a model name is 1 to 64 characters"),
        ({"name": "x" * 65}, "a model name is 1 to 64 characters"),
        ({"name": ""}, "a model name is 1 to 64 characters"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(store: ModelStore, arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store.save(compile_spec(MLP, device="cpu"), **arguments)
    assert store.list() == [] and stored_weights(store) == set()


def test_the_package_root_exports_the_store() -> None:
    assert specbuilder.ModelStore is ModelStore


# -- ids, names, lookups --------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_every_id_argument_is_checked_before_the_filesystem(store: ModelStore, bad: Any, tmp_path: Path) -> None:
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"keep me")
    calls = [store.get, store.load, store.export, store.delete, store.update_run, lambda i: store.finish_run(i, "failed")]
    for call in calls:
        with pytest.raises(ValueError, match="a model id is 32 lowercase hexadecimal digits"):
            call(bad)
    with pytest.raises(ValueError):
        store.delete("../../victim")  # would be exactly the victim, were it used as a path
    assert victim.read_bytes() == b"keep me"


def test_an_unknown_id_is_model_not_found(store: ModelStore) -> None:
    missing = "0123456789abcdef" * 2
    for call in (store.get, store.load, store.export, store.delete, store.update_run, lambda i: store.finish_run(i, "failed")):
        with pytest.raises(ModelNotFound) as caught:
            call(missing)
        assert isinstance(caught.value, KeyError)
        assert str(caught.value) == f"no model or run with id {missing} in the store"


def test_delete_removes_the_row_and_the_file(store: ModelStore) -> None:
    keep, gone = store.save(compile_spec(MLP, device="cpu")), store.save(compile_spec(MLP, device="cpu"))
    store.delete(gone.id)
    assert [r.id for r in store.list()] == [keep.id]
    assert stored_weights(store) == {keep.id}
    with pytest.raises(ModelNotFound):
        store.delete(gone.id)


def test_list_filters_by_status_oldest_first(store: ModelStore) -> None:
    first = store.save(compile_spec(MLP, device="cpu"))
    run = store.start_run(MLP)
    second = store.save(compile_spec(MLP, device="cpu"), status="failed")
    assert [r.id for r in store.list()] == [first.id, run.id, second.id]
    assert [r.id for r in store.list(status="running")] == [run.id]
    with pytest.raises(ValueError, match="status must be one of running, completed"):
        store.list(status="done")


# -- runs -----------------------------------------------------------------------------------


def test_a_run_is_recorded_updated_and_finished(store: ModelStore) -> None:
    run = store.start_run(MLP, config={"lr": 0.1}, name="digits-run", dataset="digits")
    assert (run.status, run.has_weights, run.history) == ("running", False, [])
    with pytest.raises(NoWeights, match=f"model {run.id} \\('digits-run'\\) has no weights: the run is still running"):
        store.load(run.id)
    updated = store.update_run(run.id, history=[{"epoch": 0, "loss": 1.0}])
    assert updated.history == [{"epoch": 0, "loss": 1.0}] and updated.updated >= run.updated
    model = compile_spec(MLP, device="cpu", seed=5)
    done = store.finish_run(run.id, "completed", model, stats=[{"layer": "relu_1"}])
    assert (done.status, done.has_weights, done.history, done.stats) == ("completed", True, updated.history, [{"layer": "relu_1"}])
    assert_same_weights(model, store.load(run.id, device="cpu"))
    with pytest.raises(StoreError, match="is 'completed'; only a running run can be finished"):
        store.finish_run(run.id, "failed")
    with pytest.raises(StoreError, match="only a running run can be updated"):
        store.update_run(run.id, history=[])


def test_a_runs_start_and_progress_commit_without_fsync_and_everything_else_with_it(directory_store: ModelStore) -> None:
    """A training loop must not wait on the disk for progress; an outcome is durable when the call returns.

    SQLite fsyncs in C, out of Python's sight: the index connection's statement trace is where the
    level each commit ran under shows."""
    levels: list[str] = []  # the synchronous level each COMMIT ran under
    level = ["FULL"]

    def trace(statement: str) -> None:
        if statement.startswith("PRAGMA synchronous="):
            level[0] = statement.removeprefix("PRAGMA synchronous=")
        elif statement == "COMMIT":
            levels.append(level[0])

    directory_store._db.set_trace_callback(trace)
    run = directory_store.start_run(MLP)
    directory_store.update_run(run.id, history=[{"epoch": 0, "loss": 1.0}])
    assert levels == ["NORMAL", "NORMAL"]
    levels.clear()
    directory_store.finish_run(run.id, "completed", compile_spec(MLP, device="cpu"))
    directory_store.finish_run(directory_store.start_run(MLP).id, "failed", reason="out of memory")
    directory_store.delete(directory_store.save(compile_spec(MLP, device="cpu")).id)
    assert levels == ["FULL", "NORMAL", "FULL", "FULL", "FULL"]
    with pytest.raises(StoreError, match="only a running run can be updated"):
        directory_store.update_run(run.id, history=[])  # rolled back
    assert directory_store._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL again for whatever comes next


def test_a_run_that_failed_without_weights_says_why_it_cannot_load(store: ModelStore) -> None:
    run = store.start_run(MLP)
    store.finish_run(run.id, "failed", reason="out of memory")
    with pytest.raises(NoWeights, match="ended 'failed' without saving weights \\(out of memory\\)"):
        store.export(run.id)


def test_a_run_whose_process_was_killed_reads_interrupted_in_a_store_that_stayed_open(tmp_path: Path) -> None:
    """Replicas share a store: one must not keep reporting a killed replica's run as running."""
    with ModelStore(tmp_path) as store:
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys, json; from specbuilder.store import ModelStore; "
             "s = ModelStore(sys.argv[1]); print(s.start_run(json.loads(sys.argv[2])).id, flush=True); sys.stdin.read()",
             str(tmp_path), json.dumps(MLP)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert child.stdout is not None
            run_id = child.stdout.readline().strip()
            assert store.get(run_id).status == "running"  # its process is alive
            child.kill()
            child.wait()
            record = store.get(run_id)
            assert (record.status, record.reason) == ("interrupted", f"the process running it (pid {child.pid}) ended before it finished")
            assert [r.status for r in store.list()] == ["interrupted"]
        finally:
            child.kill()


def test_closing_marks_this_stores_unfinished_runs_interrupted(tmp_path: Path) -> None:
    with ModelStore(tmp_path) as store:
        run = store.start_run(MLP)
    with ModelStore(tmp_path) as store:
        record = store.get(run.id)
    assert (record.status, record.reason) == ("interrupted", "the store was closed before the run finished")
    with pytest.raises(StoreError, match="is closed"):
        store.list()


def test_opening_leaves_the_runs_of_a_live_store_alone(tmp_path: Path) -> None:
    with ModelStore(tmp_path) as first:
        run = first.start_run(MLP)
        with ModelStore(tmp_path) as second:
            assert second.get(run.id).status == "running"
            second.finish_run(run.id, "cancelled")
        assert first.get(run.id).status == "cancelled"


# -- failures and tidying -------------------------------------------------------------------


def test_a_weights_write_that_fails_midway_leaves_nothing(directory_store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_then_fail(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
        Path(path).write_bytes(b"\x00" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "save_file", half_then_fail)
    with pytest.raises(StoreError, match="could not write the weights of model [0-9a-f]{32} \\('mlp'\\) to .*No space left on device"):
        directory_store.save(compile_spec(MLP, device="cpu"))
    run = directory_store.start_run(MLP)
    with pytest.raises(StoreError, match="could not write the weights"):
        directory_store.finish_run(run.id, "completed", compile_spec(MLP, device="cpu"))
    assert [r.id for r in directory_store.list()] == [run.id] and directory_store.get(run.id).status == "running"
    assert stored_weights(directory_store) == set()


def test_a_save_whose_row_cannot_be_written_leaves_no_file_and_spares_other_entries(
    directory_store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = compile_spec(MLP, device="cpu", seed=1)
    kept = directory_store.save(first)
    monkeypatch.setattr("specbuilder.store.model_store.new_id", lambda: kept.id)  # a colliding id
    with pytest.raises(sqlite3.IntegrityError):
        directory_store.save(compile_spec(MLP, device="cpu", seed=2))
    assert [r.id for r in directory_store.list()] == [kept.id] and stored_weights(directory_store) == {kept.id}
    assert_same_weights(first, directory_store.load(kept.id, device="cpu"))


def test_a_failed_rename_leaves_nothing(directory_store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(temp: Path, path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("specbuilder.store.model_store.publish", fail)
    with pytest.raises(StoreError, match="could not write the weights of model .*Input/output error"):
        directory_store.save(compile_spec(MLP, device="cpu"))
    assert directory_store.list() == [] and stored_weights(directory_store) == set()


def test_two_finishers_of_one_run_cannot_both_win(store: ModelStore) -> None:
    run = store.start_run(MLP)
    models = [compile_spec(MLP, device="cpu", seed=seed) for seed in range(2)]
    outcomes: list[BaseException | None] = [None, None]
    barrier = threading.Barrier(2)

    def finish(index: int) -> None:
        barrier.wait()
        try:
            store.finish_run(run.id, "completed", models[index])
        except StoreError as error:
            outcomes[index] = error

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    losers = [i for i, outcome in enumerate(outcomes) if outcome is not None]
    assert len(losers) == 1 and "only a running run can be finished" in str(outcomes[losers[0]])
    assert_same_weights(models[1 - losers[0]], store.load(run.id, device="cpu"))
    assert stored_weights(store) == {run.id}


def test_opening_deletes_temporary_and_unreferenced_weights_files_only(tmp_path: Path) -> None:
    with ModelStore(tmp_path) as store:
        kept = store.save(compile_spec(MLP, device="cpu"))
    weights = tmp_path / "weights"
    (weights / f".{'1' * 32}.safetensors.0badc0de.tmp").write_bytes(b"partial")
    (weights / ".tmpft18Of").write_bytes(b"partial, from safetensors' own atomic write")
    (weights / f"{'2' * 32}.safetensors").write_bytes(b"orphan")
    (weights / "notes.txt").write_text("not ours")
    with ModelStore(tmp_path) as store:
        assert [r.id for r in store.list()] == [kept.id]
    assert weight_files(tmp_path) == {f"{kept.id}.safetensors", "notes.txt"}


def test_a_file_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="is a file, not a model store directory"):
        ModelStore(tmp_path / "file")


def test_an_index_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    ModelStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match=f"written by a newer specbuilder \\(index version 99; this one reads {SCHEMA_VERSION}\\)"):
        ModelStore(tmp_path)
    assert list((tmp_path / "locks").glob("*.owner")) == []


# -- concurrency ----------------------------------------------------------------------------


def test_eight_threads_save_and_list_at_once(store: ModelStore) -> None:
    # built here: compile_spec(seed=...) seeds torch's global generator, which threads share
    models = [[compile_spec(MLP, device="cpu", seed=t * 10 + i) for i in range(3)] for t in range(8)]
    saved: dict[str, torch.nn.Module] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(thread: int) -> None:
        try:
            barrier.wait()
            for model in models[thread]:
                record = store.save(model)
                saved[record.id] = model
                assert record.id in {r.id for r in store.list()}
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {r.id for r in store.list()} == saved.keys() and len(saved) == 24
    for model_id, model in saved.items():
        assert_same_weights(model, store.load(model_id, device="cpu"))


# -- crash safety ---------------------------------------------------------------------------

ZYGOTE = r"""
import json, os, sys, time
from specbuilder.compiler import compile_spec
from specbuilder.store import ModelStore

root, spec = sys.argv[1], json.loads(sys.argv[2])

def work(round_):
    store = ModelStore(root)
    store.start_run(spec, name=f"never-finished-{round_}")
    deadline, index = time.monotonic() + 20, 0
    while time.monotonic() < deadline:
        seed = round_ * 100_000 + index
        model = compile_spec(spec, device="cpu", seed=seed)
        if index % 3 == 2:
            store.finish_run(store.start_run(spec, config={"seed": seed}).id, "completed", model)
        else:
            record = store.save(model, config={"seed": seed})
            if index % 5 == 4:
                store.delete(record.id)
        if index == 0:
            print(f"ready {os.getpid()}", flush=True)
        index += 1
    os._exit(0)

for line in sys.stdin:  # torch is imported once here; each worker is a fork that does the work
    pid = os.fork()
    if pid == 0:
        work(int(line))
    print(f"exited {os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}", flush=True)
"""


def read_line(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    """One line from the child's stdout, or fail after ``timeout`` seconds instead of hanging."""
    assert proc.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        chunk = os.read(proc.stdout.fileno(), 1) if ready else b""
        if not chunk:
            pytest.fail(f"the saving process said nothing more (so far: {line!r}; exit code {proc.poll()})")
        line += chunk
    return line.decode().strip()


def check_after_kill(root: Path, round_: int, pid: int) -> None:
    """Nothing partial is listed, every model loads with the weights it was saved with, no stray files."""
    with ModelStore(root) as store:
        records = store.list()
        assert [r.status for r in records if r.status == "running"] == []
        lost = [r for r in records if r.name == f"never-finished-{round_}"]
        assert [(r.status, r.reason) for r in lost] == [("interrupted", f"the process running it (pid {pid}) ended before it finished")]
        with_weights = [r for r in records if r.has_weights]
        assert with_weights, "the saving process was killed before it saved anything"
        for record in with_weights:
            expected = compile_spec(MLP, device="cpu", seed=record.config["seed"])
            assert_same_weights(expected, store.load(record.id, device="cpu"))
        assert weight_files(root) == {f"{r.id}.safetensors" for r in with_weights}


def test_a_process_killed_while_saving_leaves_a_consistent_store(tmp_path: Path) -> None:
    root, rng = tmp_path / "store", random.Random(1234)
    proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(root), json.dumps(MLP)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdin is not None
    try:
        for round_ in range(5):
            proc.stdin.write(f"{round_}\n".encode())
            kind, pid = read_line(proc).split()
            assert kind == "ready"
            with ModelStore(root) as probe:  # the saver is alive: its run must stay running
                assert [r.status for r in probe.list() if r.name == f"never-finished-{round_}"] == ["running"]
            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(int(pid), signal.SIGKILL)
            assert read_line(proc) == f"exited {-signal.SIGKILL}"
            check_after_kill(root, round_, int(pid))
    finally:
        proc.kill()
        proc.wait()
