"""The model store's limits, pages and permissions: what an audit found it let through.

``max_bytes``/``max_models`` refuse before anything is written, also when two stores share a
directory; a run whose weights do not fit is kept, ``failed``; a version 1 index is upgraded
with nothing lost. ``page`` walks every entry once, newest first, without reading a spec.
Everything a store creates is its user's alone, and a directory of another user is refused
(checked with a throwaway OS user: the suite runs as root).
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from specbuilder.compiler import compile_spec
from specbuilder.spec import parse_spec
from specbuilder.store import BadCursor, ModelRecord, ModelStore, ModelSummary, QuotaExceeded, StoreError, model_store
from test_store import CNN, MLP, weight_files

def file_size(spec: dict[str, Any]) -> int:
    """The size of a weights file of ``spec`` (the same for every model of it: ids and hashes have fixed lengths)."""
    return _file_sizes()[spec["name"]]


@cache
def _file_sizes() -> dict[str, int]:
    with tempfile.TemporaryDirectory() as scratch, ModelStore(scratch) as store:
        return {spec["name"]: store.save(compile_spec(spec, device="cpu")).weights_bytes for spec in (MLP, CNN)}


def rows(root: Path) -> int:
    with sqlite3.connect(root / "index.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM models").fetchone()[0]


def modes(root: Path) -> dict[str, int]:
    """Every path of a store (the root as ``.``) and its permission bits."""
    return {".": stat.S_IMODE(root.stat().st_mode)} | {
        str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode) for path in root.rglob("*")}


# -- limits ---------------------------------------------------------------------------------


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The weights files the store writes (each temporary file, as ``write_temp`` returns it)."""
    written, write_temp = [], model_store.write_temp

    def counted(*args: Any) -> Path:
        written.append(write_temp(*args))
        return written[-1]

    monkeypatch.setattr(model_store, "write_temp", counted)
    return written


def test_the_size_of_an_entrys_weights_is_its_files(tmp_path: Path) -> None:
    with ModelStore(tmp_path) as store:
        model = store.save(compile_spec(MLP, device="cpu"))
        run = store.finish_run(store.start_run(CNN).id, "completed", compile_spec(CNN, device="cpu"))
        failed = store.finish_run(store.start_run(MLP).id, "failed", reason="no")
        for record in (model, run):
            assert record.weights_bytes == (tmp_path / "weights" / f"{record.id}.safetensors").stat().st_size
            assert store.get(record.id).weights_bytes == record.weights_bytes
        assert failed.weights_bytes == 0


def test_max_models_refuses_a_save_or_a_run_start_before_writing_anything(tmp_path: Path, writes: list[Path]) -> None:
    with ModelStore(tmp_path, max_models=2) as store:
        store.save(compile_spec(MLP, device="cpu"))
        kept = store.start_run(MLP)
        del writes[:]
        message = ("cannot store {}: the store holds 2 models and runs and its limit is 2 (max_models); "
                   "delete some with `specbuilder models rm ID`")
        with pytest.raises(QuotaExceeded) as refused:
            store.save(compile_spec(MLP, device="cpu"), name="third")
        assert str(refused.value) == message.format("model 'third'")
        with pytest.raises(QuotaExceeded) as refused:
            store.start_run(CNN)
        assert str(refused.value) == message.format("run 'cnn'")
        assert rows(tmp_path) == 2 and len(weight_files(tmp_path)) == 1 and writes == []
        store.finish_run(kept.id, "completed", compile_spec(MLP, device="cpu"))  # finishing adds no entry
        store.delete(kept.id)
        store.start_run(MLP)


def test_max_bytes_refuses_weights_that_would_pass_it_and_counts_only_files(tmp_path: Path, writes: list[Path]) -> None:
    """Refused before writing, on the tensors' bytes (the file adds a header): the message gives those."""
    size = file_size(MLP)
    with ModelStore(tmp_path, max_bytes=2 * size + 10) as store:
        first = store.save(compile_spec(MLP, device="cpu"))
        store.save(compile_spec(MLP, device="cpu"))
        del writes[:]
        with pytest.raises(QuotaExceeded) as refused:
            store.save(compile_spec(MLP, device="cpu"))
        tensors = sum(t.numel() * t.element_size() for t in compile_spec(MLP, device="cpu").state_dict().values())
        assert str(refused.value) == (
            f"cannot store model 'mlp': {tensors:,} bytes of weights would bring the store's to {2 * size + tensors:,} bytes, over "
            f"its limit of {2 * size + 10:,} bytes (max_bytes); delete some with `specbuilder models rm ID`")
        assert rows(tmp_path) == 2 and len(weight_files(tmp_path)) == 2 and writes == []
        store.save(None, MLP, status="diverged")  # an entry without weights takes no bytes
        store.finish_run(store.start_run(MLP).id, "cancelled")
        store.delete(first.id)
        store.save(compile_spec(MLP, device="cpu"))


def test_weights_larger_than_max_bytes_by_themselves_say_that_no_deletion_helps(tmp_path: Path, writes: list[Path]) -> None:
    with ModelStore(tmp_path, max_bytes=1000) as store, pytest.raises(QuotaExceeded) as refused:
        store.save(compile_spec(CNN, device="cpu"))
    assert str(refused.value).startswith("cannot store model 'cnn': ")
    assert str(refused.value).endswith(" of weights are more than the store's limit of 1,000 bytes (max_bytes) by themselves; "
                                       "only a larger max_bytes makes room for them")
    assert weight_files(tmp_path) == set() and writes == []


def test_a_run_whose_weights_do_not_fit_is_kept_failed_without_weights(tmp_path: Path) -> None:
    with ModelStore(tmp_path, max_bytes=file_size(MLP)) as store:
        store.save(compile_spec(MLP, device="cpu"))
        run = store.start_run(MLP, config={"lr": 0.1})
        store.update_run(run.id, history=[{"epoch": 1, "loss": 0.5}])
        with pytest.raises(QuotaExceeded) as refused:
            store.finish_run(run.id, "completed", compile_spec(MLP, device="cpu"), stats=[{"name": "fc1"}], reason=None)
        assert str(refused.value).startswith(f"cannot store the weights of run {run.id} ('mlp'), which ended 'completed': ")
        record = store.get(run.id)
        assert (record.status, record.reason, record.has_weights, record.weights_bytes) == ("failed", str(refused.value), False, 0)
        assert (record.config, record.history, record.stats) == ({"lr": 0.1}, [{"epoch": 1, "loss": 0.5}], [{"name": "fc1"}])
        assert f"{run.id}.safetensors" not in weight_files(tmp_path) and len(weight_files(tmp_path)) == 1


@pytest.mark.parametrize("limit", ["max_models", "max_bytes"])
def test_two_stores_sharing_a_directory_cannot_pass_a_limit_together(tmp_path: Path, limit: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One store's save is held after its file is written, past the check before writing; the
    other's save then commits. The held one must be refused by the check in its transaction."""
    limits = {"max_models": 1} if limit == "max_models" else {"max_bytes": file_size(MLP) * 3 // 2}
    written, go, write_temp = threading.Event(), threading.Event(), model_store.write_temp

    def held_after_writing(*args: Any) -> Path:
        temp = write_temp(*args)
        if threading.current_thread().name == "held":
            written.set()
            assert go.wait(timeout=60)
        return temp

    monkeypatch.setattr(model_store, "write_temp", held_after_writing)
    outcome: list[BaseException | ModelRecord] = []
    with ModelStore(tmp_path, **limits) as held, ModelStore(tmp_path, **limits) as other:

        def save_held() -> None:
            try:
                outcome.append(held.save(compile_spec(MLP, device="cpu"), name="held"))
            except QuotaExceeded as error:
                outcome.append(error)

        thread = threading.Thread(target=save_held, name="held")
        thread.start()
        assert written.wait(timeout=60)
        kept = other.save(compile_spec(MLP, device="cpu"), name="other")
        go.set()
        thread.join()
        assert isinstance(outcome[0], QuotaExceeded) and f"({limit})" in str(outcome[0])
        assert [r.id for r in other.list()] == [kept.id]
    assert weight_files(tmp_path) == {f"{kept.id}.safetensors"}


OPERATIONS = st.lists(st.sampled_from(["save mlp", "save cnn", "save none", "start", "finish", "finish none", "delete"]), max_size=12)


@given(operations=OPERATIONS, max_models=st.none() | st.integers(1, 5), max_files=st.none() | st.integers(1, 4))
def test_the_store_takes_exactly_what_fits_its_limits(operations: list[str], max_models: int | None, max_files: int | None) -> None:
    """Against a model of the store (entries and their weights' sizes): each operation is
    refused exactly when it would pass a limit, and the index's sizes are the files'."""
    big = max(file_size(MLP), file_size(CNN))
    max_bytes = None if max_files is None else max_files * big - big // 2
    entries: dict[str, int] = {}  # id -> weights bytes, oldest first
    running: list[str] = []
    with tempfile.TemporaryDirectory() as scratch, ModelStore(scratch, max_bytes=max_bytes, max_models=max_models) as store:
        for operation in operations:
            spec = CNN if operation == "save cnn" else MLP
            adds_entry = operation.startswith("save") or operation == "start"
            adds_bytes = file_size(spec) if operation in ("save mlp", "save cnn") or (operation == "finish" and running) else 0
            fits = (not adds_entry or max_models is None or len(entries) < max_models) and (
                max_bytes is None or sum(entries.values()) + adds_bytes <= max_bytes)
            try:
                if operation.startswith("save"):
                    record = store.save(None if operation == "save none" else compile_spec(spec, device="cpu"), spec)
                    entries[record.id] = record.weights_bytes
                elif operation == "start":
                    running.append(store.start_run(MLP).id)
                    entries[running[-1]] = 0
                elif operation.startswith("finish") and running:
                    entries[running[0]] = store.finish_run(
                        running[0], "completed", None if operation == "finish none" else compile_spec(MLP, device="cpu")).weights_bytes
                    running.pop(0)
                elif operation == "delete" and entries:
                    gone = next(iter(entries))
                    store.delete(gone)
                    del entries[gone]
                    running = [run for run in running if run != gone]
                assert fits, f"{operation} passed a limit"
            except QuotaExceeded:
                assert not fits, f"{operation} was refused within the limits"
                if operation == "finish":
                    assert store.get(running.pop(0)).status == "failed"
            listed = {r.id: r.weights_bytes for r in store.list()}
            assert listed == entries
            on_disk = {path.name.removesuffix(".safetensors"): path.stat().st_size for path in (Path(scratch) / "weights").iterdir()}
            assert on_disk == {model_id: size for model_id, size in entries.items() if size}


@pytest.mark.parametrize("arguments", [{"max_bytes": 0}, {"max_models": -1}, {"max_models": True}, {"max_bytes": 1.5}])
def test_a_limit_is_a_positive_whole_number(tmp_path: Path, arguments: dict[str, Any]) -> None:
    (name, value), = arguments.items()
    with pytest.raises(ValueError, match=f"^{name}: a limit is a whole number of at least 1, or None for no limit; got {value!r}$"):
        ModelStore(tmp_path, **arguments)
    assert not (tmp_path / "index.sqlite3").exists()


# -- upgrading a version 1 index ------------------------------------------------------------

VERSION_1 = """CREATE TABLE models (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, spec TEXT NOT NULL, spec_hash TEXT NOT NULL,
    num_params INTEGER NOT NULL, created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL, config TEXT NOT NULL,
    history TEXT NOT NULL, stats TEXT NOT NULL, dataset TEXT NOT NULL, reason TEXT, has_weights INTEGER NOT NULL,
    owner_pid INTEGER NOT NULL, owner_token TEXT NOT NULL
);
CREATE INDEX models_status ON models (status);
CREATE INDEX models_created ON models (created_us);
PRAGMA user_version = 1;
"""
"""The index as specbuilder wrote it before ``weights_bytes`` (schema version 1)."""
V1_COLUMNS = "id, name, status, spec, spec_hash, num_params, created_us, updated_us, config, history, stats, dataset, reason, has_weights"


def test_a_version_1_index_is_upgraded_with_nothing_lost(tmp_path: Path) -> None:
    spec = parse_spec(MLP)
    weighted, weightless, gone = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    (tmp_path / "weights").mkdir()
    model = compile_spec(MLP, device="cpu", seed=3)
    save_file(model.state_dict(), tmp_path / "weights" / f"{weighted}.safetensors")
    common = (spec.canonical_json(), spec.spec_hash(), spec.num_params)
    old_rows = [
        (weighted, "kept", "completed", *common, 1_700_000_000_000_001, 1_700_000_000_000_002, json.dumps({"lr": 0.1}),
         json.dumps([{"epoch": 1, "loss": 0.25}]), json.dumps([{"name": "fc1"}]), json.dumps("blobs"), None, 1),
        (weightless, "lost", "diverged", *common, 1_700_000_000_000_003, 1_700_000_000_000_004, "{}", "[]", "[]",
         json.dumps({"name": "x"}), "loss became nan", 0),
        (gone, "removed", "completed", *common, 1_700_000_000_000_005, 1_700_000_000_000_006, "{}", "[]", "[]", "null", None, 1),
    ]
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.executescript(VERSION_1)
        db.executemany(f"INSERT INTO models ({V1_COLUMNS}, owner_pid, owner_token) VALUES ({', '.join('?' * 16)})",
                       [(*row, 1, "gone") for row in old_rows])
    with ModelStore(tmp_path) as store:
        loaded = store.load(weighted, device="cpu").state_dict()
        assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())
        sizes = {r.id: r.weights_bytes for r in store.list()}
    assert sizes == {weighted: (tmp_path / "weights" / f"{weighted}.safetensors").stat().st_size, weightless: 0, gone: 0}
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        assert db.execute(f"SELECT {V1_COLUMNS} FROM models ORDER BY created_us").fetchall() == old_rows
        assert db.execute("PRAGMA user_version").fetchone()[0] == model_store.SCHEMA_VERSION


def test_an_entry_an_older_specbuilder_writes_into_an_upgraded_index_is_measured_on_open(tmp_path: Path) -> None:
    """A replica still running version 1 inserts rows without ``weights_bytes``: they are kept, and sized on the next open."""
    ModelStore(tmp_path).close()
    spec, model_id = parse_spec(MLP), uuid.uuid4().hex
    save_file(compile_spec(MLP, device="cpu").state_dict(), tmp_path / "weights" / f"{model_id}.safetensors")
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.execute(f"INSERT INTO models ({V1_COLUMNS}, owner_pid, owner_token) VALUES ({', '.join('?' * 16)})",
                   (model_id, "old", "completed", spec.canonical_json(), spec.spec_hash(), spec.num_params, 1, 2, "{}", "[]", "[]",
                    "null", None, 1, 1, "gone"))
    with ModelStore(tmp_path) as store:
        assert store.get(model_id).weights_bytes == (tmp_path / "weights" / f"{model_id}.safetensors").stat().st_size


# -- pages ----------------------------------------------------------------------------------


def walk(store: ModelStore, **arguments: Any) -> list[list[str]]:
    """The ids of every page of a listing, in order."""
    pages, after = [], None
    while True:
        page = store.page(after=after, **arguments)
        pages.append([r.id for r in page.records])
        if page.next is None:
            return pages
        after = page.next


def test_pages_give_every_entry_once_newest_first_as_summaries(tmp_path: Path) -> None:
    with ModelStore(tmp_path) as store:
        for index in range(7):
            if index % 3 == 0:
                store.start_run(MLP)
            else:
                store.save(compile_spec(MLP, device="cpu"), status="completed" if index % 3 == 1 else "failed")
        newest_first = [r.id for r in reversed(store.list())]
        assert walk(store, limit=3) == [newest_first[:3], newest_first[3:6], newest_first[6:]]
        assert walk(store, limit=7) == [newest_first]
        assert walk(store) == [newest_first]
        assert walk(store, status="running", limit=2) == [[r.id for r in reversed(store.list("running"))][:2],
                                                          [r.id for r in reversed(store.list("running"))][2:]]
        assert walk(store, status="diverged") == [[]]
        summary, record = store.page(limit=1).records[0], store.get(newest_first[0])
        assert type(summary) is ModelSummary and issubclass(ModelRecord, ModelSummary)
        assert summary == ModelSummary(**record.model_dump(include=set(ModelSummary.model_fields)))


def test_a_page_never_reads_a_spec_config_history_or_statistics(tmp_path: Path) -> None:
    """SQLite's authorizer sees every column a statement reads; ``list`` reads them all, ``page`` none of the large ones."""
    with ModelStore(tmp_path) as store:
        store.save(compile_spec(MLP, device="cpu"), history=[{"epoch": 1}])
        store.start_run(MLP)
        read: set[str] = set()

        def authorizer(action: int, table: str | None, column: str | None, *_: Any) -> int:
            if action == sqlite3.SQLITE_READ and table == "models" and column:
                read.add(column)
            return sqlite3.SQLITE_OK

        assert store._db is not None
        store._db.set_authorizer(authorizer)
        store.list()
        assert {"spec", "config", "history", "stats"} <= read
        read.clear()
        walk(store, limit=1)
        walk(store, status="completed", limit=1)
        assert read and not read & {"spec", "config", "history", "stats"}


@given(steps=st.lists(st.sampled_from(["page", "add", "delete seen", "delete unseen"]), min_size=1, max_size=20))
def test_a_walk_sees_each_entry_once_whatever_is_added_or_deleted_meanwhile(steps: list[str]) -> None:
    """Pages of 2 while runs are added and deleted: no entry twice, none added meanwhile, and
    every entry there from the start to the end of the walk is seen."""
    with tempfile.TemporaryDirectory() as scratch, ModelStore(scratch) as store:
        initial = [store.start_run(MLP).id for _ in range(6)]
        page = store.page(limit=2)
        seen, after, deleted = [r.id for r in page.records], page.next, set()
        for step in [*steps, *["page"] * 3]:
            unseen = [model_id for model_id in initial if model_id not in seen and model_id not in deleted]
            if step == "page" and after is not None:
                page = store.page(limit=2, after=after)
                seen += [r.id for r in page.records]
                after = page.next
            elif step == "add":
                store.start_run(MLP)
            elif step.startswith("delete") and (pool := [i for i in reversed(seen) if i not in deleted] if step == "delete seen" else unseen):
                store.delete(pool[0])
                deleted.add(pool[0])
        assert after is None, "the walk ended"
        assert len(seen) == len(set(seen)) and set(seen) <= set(initial)
        assert set(initial) - deleted <= set(seen)


@pytest.mark.parametrize("cursor", [
    "", "zzz", "not base64!", "é", 7, b"bytes",
    base64.urlsafe_b64encode(b"12.notanid").decode(),
    base64.urlsafe_b64encode(f"1.2.{'0' * 32}".encode()).decode(),
    base64.urlsafe_b64encode(f"{'9' * 19}.{'0' * 32}".encode()).decode(),  # past SQLite's integers
])
def test_a_cursor_no_page_returned_is_refused_naming_it(tmp_path: Path, cursor: Any) -> None:
    with ModelStore(tmp_path) as store, pytest.raises(BadCursor, match="^not a page cursor: pass the one the page before returned"):
        store.page(after=cursor)


@pytest.mark.parametrize("limit", [0, -1, 1001, True, 2.0, "3"])
def test_a_page_holds_1_to_1000_entries(tmp_path: Path, limit: Any) -> None:
    with ModelStore(tmp_path) as store, pytest.raises(ValueError, match=f"^limit must be 1 to 1000 \\(entries a page holds\\); got {limit!r}$"):
        store.page(limit=limit)


def test_page_checks_its_status(tmp_path: Path) -> None:
    with ModelStore(tmp_path) as store, pytest.raises(ValueError, match="status must be one of running, completed"):
        store.page(status="done")


# -- permissions ----------------------------------------------------------------------------


def test_everything_a_store_creates_is_its_users_alone(tmp_path: Path) -> None:
    """Under umask 0 too: the modes are the store's own, not the umask's."""
    umask = os.umask(0)
    try:
        with ModelStore(tmp_path / "a" / "store") as store:
            store.save(compile_spec(MLP, device="cpu"))
            store.start_run(MLP)
            created = modes(store.path)
    finally:
        os.umask(umask)
    assert {"index.sqlite3-wal", "index.sqlite3-shm", "locks/store.lock"} <= created.keys()
    assert any(name.endswith(".owner") for name in created) and any(name.endswith(".safetensors") for name in created)
    expected = {name: 0o700 if (tmp_path / "a" / "store" / name).is_dir() else 0o600 for name in created}
    assert created == expected


def test_an_older_stores_wider_modes_are_narrowed_on_open_but_not_its_root(tmp_path: Path) -> None:
    with ModelStore(tmp_path) as store:
        store.save(compile_spec(MLP, device="cpu"))
    for name, mode in {".": 0o755, "weights": 0o755, "locks": 0o755, "index.sqlite3": 0o644, "index.sqlite3-wal": 0o666}.items():
        if (tmp_path / name).exists():
            os.chmod(tmp_path / name, mode)
    with ModelStore(tmp_path):
        narrowed = modes(tmp_path)
    assert narrowed["."] == 0o755
    assert {name: mode for name, mode in narrowed.items() if name != "." and mode & 0o077} == {}


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o703])
def test_a_root_every_user_may_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    os.chmod(tmp_path, mode)
    with pytest.raises(StoreError) as refused:
        ModelStore(tmp_path)
    assert str(refused.value) == (f"{tmp_path} can be written by every user (mode {mode:o}), so any of them could replace the "
                                  f"store's index or weights; use a directory only you can write to (chmod o-w {tmp_path})")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory every user can reach (tmp_path's parents are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="specbuilder-store-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.parametrize("owned_by_other", [".", "weights", "index.sqlite3"])
def test_a_store_another_user_owns_any_of_is_refused_even_by_root(tmp_path: Path, other_user: pwd.struct_passwd, owned_by_other: str) -> None:
    root = tmp_path / "theirs"
    ModelStore(root).close()
    before = modes(root)
    os.chown(root / owned_by_other, other_user.pw_uid, other_user.pw_gid)
    with pytest.raises(StoreError) as refused:
        ModelStore(root)
    assert str(refused.value) == (
        f"{root / owned_by_other} belongs to {other_user.pw_name} (uid {other_user.pw_uid}), "
        "not to this process's user, root (uid 0): a model store is only opened by the user who owns it, as its owner can "
        "read and replace what it holds; use a store directory of your own (--store DIR or $SPECBUILDER_STORE), or run as its owner")
    assert modes(root) == before and list((root / "locks").glob("*.owner")) == []


def test_another_user_can_neither_read_a_store_nor_take_its_locks(reachable: Path, other_user: pwd.struct_passwd) -> None:
    """Even in a root its owner left readable (0755): the index is 0600, the weights and locks 0700."""
    root = reachable / "store"
    with ModelStore(root) as store:
        store.save(compile_spec(MLP, device="cpu"))
    root.chmod(0o755)
    for command in (["cat", root / "index.sqlite3"], ["ls", root / "weights"], ["ls", root / "locks"], ["touch", root / "locks" / "x"]):
        tried = subprocess.run(command, user=other_user.pw_uid, capture_output=True, text=True)
        assert tried.returncode != 0 and "Permission denied" in tried.stderr, command
    assert subprocess.run(["ls", root], user=other_user.pw_uid, capture_output=True).returncode == 0, "the check above is meaningful"
