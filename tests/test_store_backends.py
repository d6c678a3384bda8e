"""The store's contract on every backend (limits, pages), and what a store on many hosts adds.

PostgreSQL and S3 are real servers started by the suite (``tests/stores.py``): leases across
processes, a restarted or stopped database, a stopped bucket, orphaned objects, migrations run
by two replicas at once, replicas racing for a limit.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from specbuilder.compiler import compile_spec
from specbuilder.store import BadCursor, ModelStore, QuotaExceeded, StoreError, StoreUnavailable
from specbuilder.store.objects import new_key
from specbuilder.store.postgres import PostgresStore, migrations
from stores import Postgres, S3Server, aws_env, stored_weights
from test_store import CNN, MLP, assert_same_weights

Opener = Callable[..., ModelStore]


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``limit`` seconds (a hang guard, not a timing)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not {what} after {limit} s")
        time.sleep(0.1)


# -- the contract, every backend --------------------------------------------------------------


def test_limits_refuse_before_writing_on_every_backend(open_store: Opener) -> None:
    store = open_store(max_models=2)
    store.save(compile_spec(MLP, device="cpu"))
    run = store.start_run(MLP)
    with pytest.raises(QuotaExceeded, match="the store holds 2 models and runs and its limit is 2 \\(max_models\\)"):
        store.save(compile_spec(MLP, device="cpu"), name="third")
    with pytest.raises(QuotaExceeded, match="cannot store run 'cnn'"):
        store.start_run(CNN)
    assert len(store.list()) == 2 and len(stored_weights(store)) == 1
    store.finish_run(run.id, "completed", compile_spec(MLP, device="cpu"))
    size = store.get(run.id).weights_bytes
    assert size > 0 and len(stored_weights(store)) == 2

    bytes_store = open_store(max_bytes=size + 10)
    bytes_store.save(compile_spec(MLP, device="cpu"))
    with pytest.raises(QuotaExceeded, match="over its limit of .* \\(max_bytes\\)"):
        bytes_store.save(compile_spec(MLP, device="cpu"))
    bytes_run = bytes_store.start_run(MLP, config={"lr": 0.1})
    with pytest.raises(QuotaExceeded) as refused:
        bytes_store.finish_run(bytes_run.id, "completed", compile_spec(MLP, device="cpu"))
    record = bytes_store.get(bytes_run.id)
    assert (record.status, record.reason, record.has_weights, record.config) == ("failed", str(refused.value), False, {"lr": 0.1})
    assert len(stored_weights(bytes_store)) == 1


def test_pages_walk_every_entry_once_newest_first_on_every_backend(open_store: Opener) -> None:
    store = open_store()
    ids = [store.save(compile_spec(MLP, device="cpu")).id if i % 2 else store.start_run(MLP).id for i in range(7)]
    seen: list[str] = []
    page = store.page(limit=3)
    while True:
        seen += [summary.id for summary in page.records]
        if page.next is None:
            break
        store.save(compile_spec(MLP, device="cpu"))  # newer than every cursor: never in this walk
        page = store.page(limit=3, after=page.next)
    assert seen == ids[::-1]
    assert [s.id for s in store.page(status="running").records] == [i for i in ids[::-1] if not ids.index(i) % 2]
    with pytest.raises(BadCursor):
        store.page(after="bm90IGEgY3Vyc29y")


# -- PostgreSQL: replicas ----------------------------------------------------------------------

pg_backends = pytest.mark.parametrize("backend", ["postgresql+s3", "postgresql+dir"])


@pg_backends
def test_what_one_replica_stores_another_reads_and_deletes(open_store: Opener) -> None:
    a = open_store()
    b = open_store(replica_of=a)
    model = compile_spec(CNN, device="cpu", seed=3)
    saved = a.save(model)
    assert_same_weights(model, b.load(saved.id, device="cpu"))
    b.delete(saved.id)
    assert not a.exists(saved.id) and stored_weights(a) == set()


@pg_backends
def test_replicas_racing_for_the_last_place_cannot_both_take_it(open_store: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    """A's save is held after its upload, past the check before it; B's save then commits. A must be refused in its transaction."""
    a = open_store(max_models=1)
    b = open_store(replica_of=a, max_models=1)
    uploaded, go, write = threading.Event(), threading.Event(), a._objects.write

    def held(*args: Any) -> int:
        size = write(*args)
        uploaded.set()
        go.wait(60)
        return size

    monkeypatch.setattr(a._objects, "write", held)
    outcome: list[BaseException] = []
    thread = threading.Thread(target=lambda: _catch(outcome, lambda: a.save(compile_spec(MLP, device="cpu"))))
    thread.start()
    assert uploaded.wait(60)
    kept = b.save(compile_spec(MLP, device="cpu"))
    go.set()
    thread.join()
    assert len(outcome) == 1 and isinstance(outcome[0], QuotaExceeded)
    assert [r.id for r in b.list()] == [kept.id] and stored_weights(b) == {kept.id}


def _catch(into: list[BaseException], call: Callable[[], object]) -> None:
    try:
        call()
    except BaseException as error:  # the main thread checks it
        into.append(error)


KILLED_REPLICA = r"""
import sys
from specbuilder.store import ModelStore
store = ModelStore.open(sys.argv[1], weights=sys.argv[2], lease_seconds=1.0)
print(store.start_run({"name": "mlp", "input_shape": [4], "layers": [{"type": "linear", "out_features": 2}]}).id, flush=True)
sys.stdin.read()
"""


@pg_backends
def test_a_run_outlives_its_lease_while_its_replica_lives_and_reads_interrupted_once_it_is_killed(
        open_store: Opener, backend: str, tmp_path: Path) -> None:
    observer = open_store()
    url, weights = _urls(observer)
    replica = subprocess.Popen([sys.executable, "-c", KILLED_REPLICA, url, weights], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        run_id = replica.stdout.readline().decode().strip()
        time.sleep(3)  # three leases: renewed meanwhile, so still running
        assert observer.get(run_id).status == "running"
    finally:
        replica.kill()
        replica.wait()
    wait_for(lambda: observer.get(run_id).status == "interrupted", "interrupted")
    assert "stopped renewing its lease" in observer.get(run_id).reason


def _urls(store: ModelStore) -> tuple[str, str]:
    """The URLs a test's PostgreSQL store was opened with (the test server's password is empty, so ``url`` is whole)."""
    assert isinstance(store, PostgresStore)
    return store.url.replace(":***@", ":@"), store._objects.url


@pytest.mark.parametrize("backend", ["postgresql+dir"])
def test_the_database_restarted_or_stopped(open_store: Opener, postgres: Postgres) -> None:
    store = open_store()
    saved = store.save(compile_spec(MLP, device="cpu"))
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailable, match="the PostgreSQL index at postgresql://.* cannot be reached: .*then retry"):
            store.get(saved.id)
    finally:
        postgres.start()
    assert store.get(saved.id).id == saved.id  # the pool's connections died with the server; new ones are made
    postgres.pg_ctl("-m", "fast", "restart")  # while idle
    assert store.exists(saved.id) and store.load(saved.id, device="cpu") is not None


@pytest.mark.parametrize("backend", ["postgresql+dir"])
def test_a_stopped_bucket_is_store_unavailable_and_a_run_that_cannot_store_its_weights_ends_failed(
        open_store: Opener, postgres: Postgres) -> None:
    bucket = S3Server()
    try:
        with aws_env(bucket):
            store = ModelStore.open(postgres.url(), weights=bucket.bucket())
            saved = store.save(compile_spec(MLP, device="cpu"))
            run = store.start_run(MLP)
            bucket.stop()
            with pytest.raises(StoreUnavailable, match="the weights bucket s3://.* cannot be reached"):
                store.save(compile_spec(MLP, device="cpu"))
            with pytest.raises(StoreUnavailable, match="the weights bucket"):
                store.load(saved.id)
            with pytest.raises(StoreUnavailable, match="the weights bucket"):
                store.finish_run(run.id, "completed", compile_spec(MLP, device="cpu"))  # tried COMMIT_TRIES times
            assert store.get(run.id).status == "running"
            failed = store.finish_run(run.id, "failed", reason="StoreUnavailable: the weights bucket cannot be reached")
            assert (failed.status, failed.has_weights) == ("failed", False)
            assert [r.id for r in store.list(status="completed")] == [saved.id]
            store.close()
    finally:
        bucket.stop()


@pg_backends
def test_the_sweep_deletes_old_unreferenced_objects_only(open_store: Opener) -> None:
    store = open_store()
    kept = store.save(compile_spec(MLP, device="cpu"))
    orphan = new_key("3" * 32)
    store._objects.write(orphan, compile_spec(MLP, device="cpu").state_dict(), {})
    assert store.sweep() == [] and stored_weights(store) == {kept.id, "3" * 32}  # young: maybe another replica's upload
    assert store.sweep(grace_seconds=0) == [orphan] and stored_weights(store) == {kept.id}
    assert store.load(kept.id, device="cpu") is not None


def test_replicas_starting_at_once_migrate_once_and_a_newer_schema_is_refused(postgres: Postgres, tmp_path: Path) -> None:
    url = postgres.url()
    opened: list[ModelStore] = []
    errors: list[BaseException] = []
    threads = [threading.Thread(target=lambda i=i: _catch(errors, lambda: opened.append(
        ModelStore.open(url, weights=str(tmp_path / f"w{i}"))))) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(opened) == 4
    with opened[0]._reading() as db:
        assert [row[0] for row in db.execute("SELECT version FROM schema_version")] == [v for v, _ in migrations()]
        db.execute("INSERT INTO schema_version VALUES (?, 0)", (migrations()[-1][0] + 1,))
    for store in opened:
        store.close()
    with pytest.raises(StoreError, match="was written by a newer specbuilder"):
        ModelStore.open(url, weights=str(tmp_path / "w0"))


def test_open_names_what_is_wrong_with_a_location(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a PostgreSQL store needs a place for weights"):
        ModelStore.open("postgresql://u@localhost/db")
    with pytest.raises(ValueError, match="a store is a directory or postgresql://"):
        ModelStore.open("mysql://u@localhost/db")
    with pytest.raises(ValueError, match="a directory store keeps its weights in"):
        ModelStore.open(tmp_path / "s", weights="s3://bucket/prefix")
    with pytest.raises(ValueError, match="schema .* is lowercase letters"):
        ModelStore.open("postgresql://u@localhost/db?schema=Robert'); DROP", weights=str(tmp_path))
    with ModelStore.open(tmp_path / "s", weights=tmp_path / "s" / "weights") as store:
        assert type(store) is ModelStore


def test_a_password_is_never_shown(postgres: Postgres, tmp_path: Path) -> None:
    url = postgres.url().replace("postgres:@", "postgres:s3cret@")  # the test server does not check it
    with ModelStore.open(url, weights=str(tmp_path)) as store:
        assert "s3cret" not in repr(store) and ":***@" in repr(store)
