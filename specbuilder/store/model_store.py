"""``ModelStore``: trained models and training runs kept in one directory.

Layout::

    <root>/index.sqlite3          one row per model or run (SQLite, WAL): spec as canonical
                                  JSON, config, history, stats, dataset, status, times, the
                                  size of its weights file
    <root>/weights/<id>.safetensors   the weights of an entry that has them
    <root>/locks/store.lock       shared while a weights file is being committed, exclusive
                                  while a store opens and tidies up
    <root>/locks/<token>.owner    held by each open ModelStore for as long as it is open

A model becomes visible only when complete: its weights file is written, fsynced and renamed
into place, and only then is its row committed. Killing a process at any moment leaves no
partial entry: at worst a temporary or unreferenced weights file, which the next open deletes
(it waits for saves in flight anywhere to finish first). Runs left ``running`` by a store whose
owner lock nobody holds any more (its process died) are marked ``interrupted`` on open, and
by every ``get`` and ``list`` of a store open in another process.
Finished models and outcomes are fsynced before the call returns; a run's start and progress are
committed without an fsync of their own (the next durable commit makes them durable), so a
training loop does not wait on the disk for them.
Weights are only ever read with safetensors; nothing is unpickled.

A store is its user's alone (``specbuilder.store.files``): directories 0700, files 0600, and a
directory or index another user owns is refused. Limits (``max_bytes`` of weights files,
``max_models`` entries) are checked in the transaction that would commit past them, so
processes sharing a store cannot pass them together. Listings come in pages of summaries
(``page``), newest first, read without the large columns.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from specbuilder.compiler import SpecLike, Style, build_module, compile_spec
from specbuilder.devices import resolve_device
from specbuilder.spec import ModelSpec, parse_spec
from specbuilder.store.files import (
    WEIGHTS_SUFFIX,
    fsync_path,
    hold,
    is_held,
    is_temp,
    locked,
    owned_dir,
    owned_file,
    publish,
    write_temp,
)
from specbuilder.store.records import (
    FINAL_STATUSES,
    ID_PATTERN,
    BadCursor,
    ModelNotFound,
    ModelRecord,
    ModelSummary,
    NoWeights,
    Page,
    QuotaExceeded,
    StoreError,
    as_dataset,
    as_dict,
    as_dict_list,
    check_id,
    check_name,
    check_status,
    new_id,
    shown,
)

INDEX = "index.sqlite3"
INDEX_FILES = (INDEX, f"{INDEX}-wal", f"{INDEX}-shm")
"""The index and SQLite's companions (created with the index's mode, so 0600 like it)."""
SCHEMA_VERSION = 2
"""1: the first index. 2: ``weights_bytes`` (for ``max_bytes``); the small columns first, so a
row's summary is read without walking the overflow pages of its spec and history; indexes in
listing order. ``weights_bytes`` defaults to 0, so a version 1 specbuilder still running on an
upgraded store (a replica not yet restarted) can write its rows; opening measures them."""
SUMMARY_COLUMNS = "id, name, status, spec_hash, num_params, created_us, updated_us, dataset, reason, has_weights, weights_bytes"
"""What ``page`` reads: a ``ModelSummary``."""
LARGE_COLUMNS = "spec, config, history, stats"
COLUMNS = f"{SUMMARY_COLUMNS}, {LARGE_COLUMNS}"
"""What ``get`` and ``list`` read: a ``ModelRecord``."""
INDEXES = (
    "CREATE INDEX models_by_created ON models (created_us, id)",
    "CREATE INDEX models_by_status ON models (status, created_us, id)",
    "CREATE INDEX models_by_size ON models (weights_bytes)",
)
"""Listings in (created, id) order, all or of one status; the running runs found by a search; ``max_bytes``'s sum
read from a small index."""


def _create_table(name: str) -> str:
    return f"""CREATE TABLE {name} (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        spec_hash TEXT NOT NULL,
        num_params INTEGER NOT NULL,
        created_us INTEGER NOT NULL,
        updated_us INTEGER NOT NULL,
        dataset TEXT NOT NULL,
        reason TEXT,
        has_weights INTEGER NOT NULL,
        weights_bytes INTEGER NOT NULL DEFAULT 0,
        owner_pid INTEGER NOT NULL,
        owner_token TEXT NOT NULL,
        spec TEXT NOT NULL,
        config TEXT NOT NULL,
        history TEXT NOT NULL,
        stats TEXT NOT NULL
    )"""


SCHEMA = (_create_table("models"), *INDEXES)
"""A new index, at ``SCHEMA_VERSION``."""
VERSION_1_COLUMNS = f"{SUMMARY_COLUMNS.removesuffix(', weights_bytes')}, owner_pid, owner_token, {LARGE_COLUMNS}"
FROM_VERSION_1 = (
    _create_table("models_v2"),
    f"INSERT INTO models_v2 ({VERSION_1_COLUMNS}) SELECT {VERSION_1_COLUMNS} FROM models",
    "DROP TABLE models",
    "ALTER TABLE models_v2 RENAME TO models",
    *INDEXES,
)
"""Version 1 to 2: every row copied into the new layout (``weights_bytes`` measured by ``_recover``)."""
NEWEST_FIRST = "ORDER BY created_us DESC, id DESC"
OLDEST_FIRST = "ORDER BY created_us, id"
MAX_PAGE = 1000
"""Most summaries ``page`` returns at once (each is a few hundred bytes)."""
CURSOR = re.compile(r"(-?[0-9]{1,18})\.([0-9a-f]{32})")
"""A page cursor, decoded: the ``created_us`` and ``id`` of the last entry of the page before (18 digits: any
time in SQLite's 64-bit integers)."""
REMEDY = "delete some with `specbuilder models rm ID`"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BUSY_TIMEOUT_S = 30.0
INTERRUPT_ORPHANS = (
    "UPDATE models SET status = 'interrupted', updated_us = ?, "
    "reason = 'the process running it (pid ' || owner_pid || ') ended before it finished' "
    "WHERE status = 'running' AND owner_token"
)
"""Marks a dead process's runs ``interrupted``; the caller ends it with which owners (``= ?``, ``NOT IN (...)``)."""


def _micros(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1)


def _now_us() -> int:
    return _micros(datetime.now(UTC))


def _when(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def _amount(size: int) -> str:
    """A number of bytes for people: ``812 bytes``, ``4.3 MB``, ``75.02 GB`` (powers of 1000)."""
    if size < 10**6:
        return f"{size:,} bytes"
    return f"{size / 10**6:,.1f} MB" if size < 10**9 else f"{size / 10**9:,.2f} GB"


def _limit(value: int | None, name: str) -> int | None:
    """A store limit: None (no limit) or a whole number of at least 1."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name}: a limit is a whole number of at least 1, or None for no limit; got {shown(value)}")
    return value


def _cursor(created_us: int, model_id: str) -> str:
    """The opaque cursor of the page after the entry (``created_us``, ``model_id``)."""
    return base64.urlsafe_b64encode(f"{created_us}.{model_id}".encode()).decode().rstrip("=")


def _position(cursor: object) -> tuple[int, str]:
    """The (``created_us``, ``id``) a cursor from ``_cursor`` stands for, else ``BadCursor``."""
    match = None
    if isinstance(cursor, str):
        try:
            text = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode("ascii")
        except ValueError:  # not base64 (binascii.Error), not ASCII, or not ASCII once decoded
            text = ""
        match = CURSOR.fullmatch(text)
    if match is None:
        raise BadCursor(f"not a page cursor: pass the one the page before returned (or none, for the first page); got {shown(cursor)}")
    return int(match[1]), match[2]


@lru_cache(maxsize=256)
def _spec_from_json(text: str) -> ModelSpec:
    """A stored spec, parsed once per distinct text (specs are frozen, so sharing is safe)."""
    return parse_spec(text, max_params=None)


def _spec_of(model: nn.Module | Mapping[str, torch.Tensor], spec: SpecLike | None) -> ModelSpec:
    if spec is None:
        spec = getattr(model, "spec", None)
        if not isinstance(spec, ModelSpec):
            raise ValueError("no spec given and the model carries none (compile_spec sets module.spec); pass spec=")
        return spec
    return spec if isinstance(spec, ModelSpec) else parse_spec(spec)


def _expected_shapes(spec: ModelSpec) -> Mapping[str, tuple[int, ...]]:
    """Every state_dict key the spec compiles to, with its shape."""
    return _shapes_of(spec.canonical_json())


@lru_cache(maxsize=256)
def _shapes_of(canonical: str) -> Mapping[str, tuple[int, ...]]:
    """``_expected_shapes`` once per distinct spec (cached): building the modules, even on the meta
    device (no memory), is work every save of the same spec would otherwise repeat."""
    with torch.device("meta"):
        return MappingProxyType({
            f"{node.name}.{key}": tuple(value.shape)
            for node in _spec_from_json(canonical).nodes if node.kind.stateful
            for key, value in build_module(node).state_dict().items()
        })


def _tensors(model: nn.Module | Mapping[str, torch.Tensor], spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The CPU tensors to write, checked against what ``spec`` compiles to (every problem listed)."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    if not isinstance(state, Mapping):
        raise TypeError(f"weights must be an nn.Module or a state_dict (names to tensors); got {type(model).__name__}")
    expected = _expected_shapes(spec)
    problems = [f"missing {key}" for key in expected if key not in state]
    problems += [f"unexpected {key}" for key in state if key not in expected]
    for key, shape in expected.items():
        value = state.get(key)
        if value is not None and not isinstance(value, torch.Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif value is not None and tuple(value.shape) != shape:
            problems.append(f"{key} has shape {list(value.shape)}, the spec needs {list(shape)}")
    if problems:
        raise ValueError(f"the weights do not match spec {spec.name!r}: " + "; ".join(problems))
    return {key: state[key].detach().to("cpu").contiguous() for key in expected}


def _progress(history: Any, stats: Any) -> dict[str, str]:
    """Column values for the given (not None) ``history`` and ``stats``, checked and as JSON."""
    columns = {}
    if history is not None:
        columns["history"] = json.dumps(as_dict_list(history, "history"))
    if stats is not None:
        columns["stats"] = json.dumps(as_dict_list(stats, "stats"))
    return columns


class ModelStore:
    """Trained models and training runs in a directory; safe to share between threads and processes.

    >>> with ModelStore("models") as store:                     # doctest: +SKIP
    ...     record = store.save(compile_spec(spec), name="digits-mlp")
    ...     model = store.load(record.id)

    Ids are generated (``uuid4().hex``) and checked before any path is built from them.
    Unknown ids raise ``ModelNotFound`` (a ``KeyError``); malformed ids and names ``ValueError``.

    ``max_bytes`` caps the weights files' total size and ``max_models`` the entries (models and
    runs): what would pass either raises ``QuotaExceeded`` (see ``save``, ``start_run``,
    ``finish_run``). They hold for what this store adds; a store opened elsewhere with other
    limits adds by its own. The directory must belong to this process's effective user.
    """

    @classmethod
    def open(cls, url: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None = None, max_bytes: int | None = None,
             max_models: int | None = None, lease_seconds: float | None = None) -> ModelStore:
        """The store ``url`` names: a directory (this class), or ``postgresql://USER@HOST:PORT/DATABASE`` (``PostgresStore``).

        ``weights`` is where a PostgreSQL store keeps weights, and it needs one: ``s3://BUCKET/PREFIX``
        or a directory every replica mounts. A directory store keeps them in ``<url>/weights``
        (``weights`` may only name that). ``lease_seconds`` is how long a PostgreSQL store's running
        run outlives its replica before every replica reads it ``interrupted`` (default 30); a
        directory store, whose liveness is an flock, has no lease and ignores it.
        """
        text = os.fspath(url)
        if text.startswith(("postgresql://", "postgres://")):
            if weights is None:
                raise ValueError("a PostgreSQL store needs a place for weights (--weights): s3://BUCKET/PREFIX, or a directory every replica mounts")
            from specbuilder.store.postgres import DEFAULT_LEASE_S, PostgresStore

            return PostgresStore(text, weights, max_bytes=max_bytes, max_models=max_models,
                                 lease_seconds=DEFAULT_LEASE_S if lease_seconds is None else lease_seconds)
        if "://" in text:
            raise ValueError(f"a store is a directory or postgresql://USER@HOST:PORT/DATABASE; got {text.split('://')[0]}://...")
        if weights is not None and Path(weights).absolute() != (Path(text) / "weights").absolute():
            raise ValueError(f"a directory store keeps its weights in {Path(text) / 'weights'}; another place for weights (--weights) "
                             "is for a PostgreSQL store")
        return cls(text, max_bytes=max_bytes, max_models=max_models)

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int | None = None, max_models: int | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = _limit(max_bytes, "max_bytes")
        self.max_models = _limit(max_models, "max_models")
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path} is a file, not a model store directory")
        self._weights = self.path / "weights"
        self._locks = self.path / "locks"
        owned_dir(self.path, narrow=False)
        owned_dir(self._weights)
        owned_dir(self._locks)
        self._store_lock = self._locks / "store.lock"
        self._token = new_id()
        self._owner_path = self._locks / f"{self._token}.owner"
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        with locked(self._store_lock):
            self._owner_fd = hold(self._owner_path)
            try:
                self._db = self._connect()
                self._recover()
            except BaseException:
                self._release()
                raise

    # -- opening, recovery and closing ------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """The index, created (0600, before SQLite opens it) or checked and upgraded; autocommit mode, transactions are explicit.

        Runs with the store lock held exclusively, so one process at a time upgrades an index.
        """
        for name in INDEX_FILES:
            owned_file(self.path / name, create=name == INDEX)
        db = sqlite3.connect(self.path / INDEX, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} was written by a newer specbuilder (index version {version}; this one reads {SCHEMA_VERSION})")
            if version < SCHEMA_VERSION:
                db.execute("BEGIN IMMEDIATE")  # closing the connection on an error rolls it back
                self._upgrade(db, version)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
                fsync_path(self.path, directory=True)
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _upgrade(db: sqlite3.Connection, version: int) -> None:
        """Bring an index at ``version`` (0: a new one) to ``SCHEMA_VERSION``, keeping every row; in the caller's transaction."""
        for statement in SCHEMA if version == 0 else FROM_VERSION_1:
            db.execute(statement)

    def _recover(self) -> None:
        """Mark runs of dead owners ``interrupted``; measure unmeasured weights; delete temporary and unreferenced weights files.

        Runs with the store lock held exclusively, so no save is between its rename and its commit.
        An entry with weights and ``weights_bytes`` 0 (no safetensors file is empty) was written
        before version 2, or by a version 1 specbuilder since: its file's size is recorded.
        """
        live, dead = {self._token}, []
        for owner in self._locks.glob("*.owner"):
            if owner.stem == self._token:
                continue
            if is_held(owner):
                live.add(owner.stem)
            else:
                dead.append(owner)
        with self._transaction() as db:
            db.execute(f"{INTERRUPT_ORPHANS} NOT IN ({', '.join('?' * len(live))})", (_now_us(), *live))
            referenced = {row[0] for row in db.execute("SELECT id FROM models WHERE has_weights")}
            unmeasured = db.execute("SELECT id FROM models WHERE weights_bytes = 0 AND has_weights").fetchall()
            db.executemany("UPDATE models SET weights_bytes = ? WHERE id = ?", [(self._file_size(i), i) for (i,) in unmeasured])
        for owner in dead:
            owner.unlink(missing_ok=True)
        for file in self._weights.iterdir():
            stem = file.name.removesuffix(WEIGHTS_SUFFIX)
            orphan = file.name.endswith(WEIGHTS_SUFFIX) and ID_PATTERN.fullmatch(stem) and stem not in referenced
            if orphan or is_temp(file):
                file.unlink(missing_ok=True)

    def close(self) -> None:
        """Mark this store's unfinished runs ``interrupted`` and release everything; idempotent."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._interrupt_own_runs()
            finally:
                self._release()

    def _interrupt_own_runs(self) -> None:
        """Mark ``interrupted`` the runs this store started and has not finished (it is closing)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE models SET status = 'interrupted', updated_us = ?, "
                "reason = 'the store was closed before the run finished' WHERE status = 'running' AND owner_token = ?",
                (_now_us(), self._token),
            )

    def _release(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._owner_path.unlink(missing_ok=True)
        os.close(self._owner_fd)

    def __enter__(self) -> ModelStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelStore({str(self.path)!r})"

    # -- index access -----------------------------------------------------------------------

    @contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed when the block ends, rolled back on error.

        A durable commit is fsynced before it returns. A progress commit (``durable=False``: a run
        starting, its history so far) is not: it survives the process dying at once, and a power loss
        from the next durable commit on, which fsyncs the log it is in, so a training run does not
        wait on the disk for each of its progress writes.
        """
        with self._lock:
            db = self._open_db()
            if not durable:
                db.execute("PRAGMA synchronous=NORMAL")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    db.execute("PRAGMA synchronous=FULL")

    def _open_db(self) -> sqlite3.Connection:
        """The index connection (the caller holds ``self._lock``); ``StoreError`` once closed."""
        if self._db is None:
            raise StoreError(f"{self!r} is closed")
        return self._db

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The index for reads outside a write transaction (the one connection, this store's lock held)."""
        with self._lock:
            yield self._open_db()

    def _rows(self, where: str = "", params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._reading() as db:
            return db.execute(f"SELECT {COLUMNS} FROM models {where}", params).fetchall()

    @staticmethod
    def _summary(row: tuple[Any, ...]) -> dict[str, Any]:
        """The ``ModelSummary`` fields of a row that starts with ``SUMMARY_COLUMNS``."""
        model_id, name, status, spec_hash, num_params, created, updated, dataset, reason, has_weights, weights_bytes = row[:11]
        return {
            "id": model_id, "name": name, "status": status, "spec_hash": spec_hash, "num_params": num_params,
            "created": _when(created), "updated": _when(updated), "dataset": json.loads(dataset), "reason": reason,
            "has_weights": bool(has_weights), "weights_bytes": weights_bytes,
        }

    @classmethod
    def _record(cls, row: tuple[Any, ...]) -> ModelRecord:
        """The ``ModelRecord`` of a row of ``COLUMNS``."""
        spec, config, history, stats = row[11:]
        return ModelRecord(**cls._summary(row), spec=_spec_from_json(spec), config=json.loads(config),
                           history=json.loads(history), stats=json.loads(stats))

    def _owner(self) -> dict[str, Any]:
        """The columns that say which open store wrote a row (and so owns its run)."""
        return {"owner_pid": os.getpid(), "owner_token": self._token}

    def _insert(self, db: sqlite3.Connection, record: ModelRecord) -> None:
        owner = self._owner()
        db.execute(
            f"INSERT INTO models ({COLUMNS}, {', '.join(owner)}) VALUES ({', '.join('?' * (15 + len(owner)))})",
            (record.id, record.name, record.status, record.spec_hash, record.num_params, _micros(record.created),
             _micros(record.updated), json.dumps(record.dataset), record.reason, int(record.has_weights),
             record.weights_bytes, record.spec.canonical_json(), json.dumps(record.config), json.dumps(record.history),
             json.dumps(record.stats), *owner.values()),
        )

    @staticmethod
    def _new_record(spec: ModelSpec, name: str | None, status: str, *, config: Any = None, history: Any = None,
                    stats: Any = None, dataset: Any = None, reason: str | None = None, has_weights: bool) -> ModelRecord:
        """A record for a new entry, every argument checked before anything is written (``weights_bytes`` set once written)."""
        now = datetime.now(UTC)
        return ModelRecord(
            id=new_id(), name=spec.name if name is None else check_name(name), status=status, spec=spec,
            num_params=spec.num_params, spec_hash=spec.spec_hash(), created=now, updated=now,
            config=as_dict({} if config is None else config, "config"),
            history=as_dict_list([] if history is None else history, "history"),
            stats=as_dict_list([] if stats is None else stats, "stats"),
            dataset=as_dataset(dataset), reason=reason, has_weights=has_weights, weights_bytes=0,
        )

    # -- weights files ----------------------------------------------------------------------

    def _weights_path(self, model_id: str) -> Path:
        return self._weights / f"{check_id(model_id)}{WEIGHTS_SUFFIX}"

    def _file_size(self, model_id: str) -> int:
        """The size of an entry's weights file; 0 if it was removed outside specbuilder."""
        try:
            return self._weights_path(model_id).stat().st_size
        except FileNotFoundError:
            return 0

    def _check_room(self, db: sqlite3.Connection, what: str, *, rows: int = 0, size: int = 0) -> None:
        """``QuotaExceeded`` if ``rows`` more entries or ``size`` more bytes of weights would pass a limit.

        Decisive inside the write transaction that then commits them: writers sharing the store
        (threads, processes) take that lock one after another, so they cannot pass a limit together.
        """
        if rows and self.max_models is not None:
            (count,) = db.execute("SELECT COUNT(*) FROM models").fetchone()
            if count + rows > self.max_models:
                raise QuotaExceeded(
                    f"cannot store {what}: the store holds {count} models and runs and its limit is {self.max_models} (max_models); {REMEDY}")
        if size and self.max_bytes is not None:
            if size > self.max_bytes:
                raise QuotaExceeded(
                    f"cannot store {what}: {_amount(size)} of weights are more than the store's limit of {_amount(self.max_bytes)} "
                    "(max_bytes) by themselves; only a larger max_bytes makes room for them")
            used = int(db.execute("SELECT COALESCE(SUM(weights_bytes), 0) FROM models").fetchone()[0])  # PostgreSQL sums to numeric
            if used + size > self.max_bytes:
                raise QuotaExceeded(
                    f"cannot store {what}: {_amount(size)} of weights would bring the store's to {_amount(used + size)}, over its "
                    f"limit of {_amount(self.max_bytes)} (max_bytes); {REMEDY}")

    def _precheck_room(self, tensors: Mapping[str, torch.Tensor], what: str, rows: int) -> None:
        """``_check_room`` before writing weights, on the tensors' bytes (the written object is a header larger)."""
        with self._reading() as db:
            self._check_room(db, what, rows=rows, size=sum(t.numel() * t.element_size() for t in tensors.values()))

    @contextmanager
    def _committing_weights(self, record: ModelRecord, tensors: dict[str, torch.Tensor], what: str,
                            rows: int) -> Iterator[tuple[sqlite3.Connection, int]]:
        """Write the weights of ``record``, then open the transaction that makes them visible; yield it and the file's size.

        The block writes the row (and checks whatever must hold); after it, still inside the
        transaction, the fsynced temporary file is renamed into place, then the row commits.
        Holding the index's write lock across the rename means two finishers of one run cannot
        both publish; any failure leaves neither a row nor a file. The shared store lock keeps a
        store opening elsewhere from deleting the file as an orphan before the commit.
        The limits (``what`` adding ``rows`` entries and the file) are checked before the write,
        on the tensors' bytes (the file is a header larger), so a full store writes nothing; then
        in the transaction on the file's size, which decides. Files of writers racing past the
        first check exist only until their transaction refuses them.
        """
        path = self._weights_path(record.id)
        self._precheck_room(tensors, what, rows)
        with locked(self._store_lock, shared=True):
            try:
                temp = write_temp(path, tensors, {"specbuilder.id": record.id, "specbuilder.spec_hash": record.spec_hash})
            except Exception as error:
                raise self._write_failed(record, error) from error
            published = False
            try:
                with self._transaction() as db:
                    size = temp.stat().st_size
                    self._check_room(db, what, rows=rows, size=size)
                    yield db, size
                    try:
                        publish(temp, path)
                    except OSError as error:
                        raise self._write_failed(record, error) from error
                    published = True
            except BaseException:
                (path if published else temp).unlink(missing_ok=True)
                raise

    def _write_failed(self, record: ModelRecord, error: Exception) -> StoreError:
        """The failure as a run's reason, which clients see: what went wrong, not where the store lives.

        The OSError (with its path) stays chained for the operator's log.
        """
        why = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        return StoreError(f"could not write the weights of model {record.id} ({record.name!r}) to the store: {why}")

    @staticmethod
    def _check_has_weights(record: ModelRecord) -> None:
        """``NoWeights``, saying why, for an entry without weights."""
        if not record.has_weights:
            what = "is still running" if record.status == "running" else f"ended {record.status!r} without saving weights"
            why = f" ({record.reason})" if record.reason else ""
            raise NoWeights(f"model {record.id} ({record.name!r}) has no weights: the run {what}{why}")

    def _read_weights(self, record: ModelRecord, device: torch.device) -> dict[str, torch.Tensor]:
        self._check_has_weights(record)
        path = self._weights_path(record.id)
        try:
            return load_file(path, device=str(device))
        except FileNotFoundError:
            self.get(record.id)  # raises ModelNotFound if it was deleted meanwhile
            raise StoreError(f"the weights file of model {record.id} is missing: {path} was removed outside specbuilder") from None
        except SafetensorError as error:
            raise StoreError(f"the weights file of model {record.id} is unreadable ({path}): {error}") from error

    # -- the API ----------------------------------------------------------------------------

    def save(
        self,
        model: nn.Module | Mapping[str, torch.Tensor] | None,
        spec: SpecLike | None = None,
        name: str | None = None,
        *,
        config: Any = None,
        history: Any = None,
        stats: Any = None,
        dataset: Any = None,
        status: str = "completed",
        reason: str | None = None,
    ) -> ModelRecord:
        """Store a finished model (a module or its state_dict) in one go; it is visible once complete.

        ``spec`` defaults to ``model.spec`` (set by ``compile_spec``); ``name`` to the spec's name.
        ``config``, ``history`` (one dict per epoch), ``stats`` (per-layer dicts or pydantic models)
        and ``dataset`` are the training record, kept as JSON. The weights must match the spec.
        ``model=None`` (with ``spec``) records an outcome without weights, such as a diverged run's.
        ``QuotaExceeded`` if the entry or its weights would pass a limit; nothing is written then.
        """
        spec = _spec_of(model, spec)
        record = self._new_record(spec, name, check_status(status, FINAL_STATUSES), config=config, history=history,
                                  stats=stats, dataset=dataset, reason=reason, has_weights=model is not None)
        what = f"model {record.name!r}"
        if model is None:
            with self._transaction() as db:
                self._check_room(db, what, rows=1)
                self._insert(db, record)
            return record
        with self._committing_weights(record, _tensors(model, spec), what, rows=1) as (db, size):
            record = record.model_copy(update={"weights_bytes": size})
            self._insert(db, record)
        return record

    def adopt(self, record: ModelRecord, weights: Mapping[str, torch.Tensor] | None) -> ModelRecord:
        """Store an entry of another store as it is: its id, name, times, status and training record, with
        ``weights`` (None for an entry without). For copying stores (``specbuilder.store.copy``).

        Only a final entry is taken (a running run belongs to its own store); ``FileExistsError`` if
        the id is here already. Visible once complete, like ``save``, and within the same limits.
        """
        check_status(record.status, FINAL_STATUSES)
        if self.exists(record.id):
            raise FileExistsError(f"model {record.id} is in this store already")
        what = f"model {record.name!r}"
        if weights is None:
            adopted = record.model_copy(update={"has_weights": False, "weights_bytes": 0})
            with self._transaction() as db:
                self._check_room(db, what, rows=1)
                self._insert(db, adopted)
            return adopted
        with self._committing_weights(record, _tensors(weights, record.spec), what, rows=1) as (db, size):
            adopted = record.model_copy(update={"has_weights": True, "weights_bytes": size})
            self._insert(db, adopted)
        return adopted

    def weights(self, model_id: str) -> dict[str, torch.Tensor]:
        """A stored model's weights on the CPU, by state_dict key; ``NoWeights`` for an entry without."""
        return self._read_weights(self.get(model_id), torch.device("cpu"))

    def start_run(self, spec: SpecLike, config: Any = None, name: str | None = None, dataset: Any = None) -> ModelRecord:
        """Record a training run now starting: status ``running``, no weights yet.

        Finish it with ``finish_run``. If this process dies first, the next store opened on the
        directory marks it ``interrupted``; closing this store does so at once. Committed without
        an fsync (a progress commit, see ``_transaction``). ``QuotaExceeded`` if the store already
        holds ``max_models`` entries; nothing is recorded then.
        """
        spec = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
        record = self._new_record(spec, name, "running", config=config, dataset=dataset, has_weights=False)
        with self._transaction(durable=False) as db:
            self._check_room(db, f"run {record.name!r}", rows=1)
            self._insert(db, record)
        return record

    def update_run(self, model_id: str, *, history: Any = None, stats: Any = None) -> ModelRecord:
        """Replace a running run's ``history`` and/or ``stats`` (progress a client can read later; a
        progress commit, without an fsync)."""
        check_id(model_id)
        with self._transaction(durable=False) as db:
            self._change_running(db, model_id, {"updated_us": _now_us(), **_progress(history, stats)}, "updated")
        return self.get(model_id)

    def finish_run(
        self,
        model_id: str,
        status: str,
        model: nn.Module | Mapping[str, torch.Tensor] | None = None,
        *,
        history: Any = None,
        stats: Any = None,
        reason: str | None = None,
    ) -> ModelRecord:
        """End a running run with a final ``status``, its weights if any, and its final history and stats.

        ``history``/``stats`` left None keep what ``update_run`` last recorded. Weights that would
        take the store past ``max_bytes`` are not written: the run is recorded ``failed``, without
        weights, the refusal as its reason (the run and its history are kept), and
        ``QuotaExceeded`` raised with the same message.
        """
        check_id(model_id)
        check_status(status, FINAL_STATUSES)
        changes: dict[str, Any] = {"status": status, "reason": reason, "updated_us": _now_us(), **_progress(history, stats)}
        if model is None:
            with self._transaction() as db:
                self._change_running(db, model_id, changes, "finished")
            return self.get(model_id)
        record = self.get(model_id)
        if record.status != "running":
            raise StoreError(f"run {model_id} ({record.name!r}) is {record.status!r}; only a running run can be finished")
        tensors, what = _tensors(model, record.spec), f"the weights of run {model_id} ({record.name!r}), which ended {status!r}"
        try:
            with self._committing_weights(record, tensors, what, rows=0) as (db, size):
                self._change_running(db, model_id, {**changes, "has_weights": 1, "weights_bytes": size}, "finished")
        except QuotaExceeded as refused:
            with self._transaction() as db:
                self._change_running(db, model_id, {**changes, "status": "failed", "reason": str(refused)}, "finished")
            raise
        return self.get(model_id)

    @staticmethod
    def _change_running(db: sqlite3.Connection, model_id: str, changes: dict[str, Any], verb: str) -> None:
        """Apply ``changes`` to a run that must be running; raise the reason it cannot be otherwise."""
        assignments = ", ".join(f"{column} = ?" for column in changes)
        cursor = db.execute(f"UPDATE models SET {assignments} WHERE id = ? AND status = 'running'", (*changes.values(), model_id))
        if cursor.rowcount == 0:
            row = db.execute("SELECT name, status FROM models WHERE id = ?", (model_id,)).fetchone()
            if row is None:
                raise ModelNotFound(f"no model or run with id {model_id} in the store")
            raise StoreError(f"run {model_id} ({row[0]!r}) is {row[1]!r}; only a running run can be {verb}")

    def _interrupt_orphans(self) -> None:
        """Mark ``interrupted`` the runs whose owner's lock nobody holds any more, as opening does.

        Before a read, so a process sharing the store (a replica) reports a run whose process
        was killed as it is, without waiting for some process to open the store again. One query
        when no other process has a run going; a lock test per other owner that has one.
        """
        with self._reading() as db:
            owners = [row[0] for row in db.execute(
                "SELECT DISTINCT owner_token FROM models WHERE status = 'running' AND owner_token != ?", (self._token,))]
        dead = [token for token in owners if not is_held(self._locks / f"{token}.owner")]
        if dead:
            with self._transaction() as db:
                db.executemany(f"{INTERRUPT_ORPHANS} = ?", [(_now_us(), token) for token in dead])

    def get(self, model_id: str) -> ModelRecord:
        """The record of one model or run; ``ModelNotFound`` if there is none with this id."""
        self._interrupt_orphans()
        rows = self._rows("WHERE id = ?", (check_id(model_id),))
        if not rows:
            raise ModelNotFound(f"no model or run with id {model_id} in the store")
        return self._record(rows[0])

    def exists(self, model_id: str) -> bool:
        """Whether the store holds an entry with this id: one indexed lookup, for caches to revalidate.

        Ids are never reused and an entry's weights never change once written, so a module
        loaded for an id stays right exactly as long as the id exists — even when another
        process sharing the store is the one that deletes it.
        """
        check_id(model_id)
        with self._reading() as db:
            return db.execute("SELECT 1 FROM models WHERE id = ?", (model_id,)).fetchone() is not None

    def delete(self, model_id: str) -> None:
        """Remove a model or run: its row, then its weights file."""
        path = self._weights_path(model_id)
        with self._transaction() as db:
            if db.execute("DELETE FROM models WHERE id = ?", (model_id,)).rowcount == 0:
                raise ModelNotFound(f"no model or run with id {model_id} in the store")
        path.unlink(missing_ok=True)

    def load(self, model_id: str, device: str | torch.device = "auto", style: Style = "sequential") -> nn.Module:
        """The stored model as a module on ``device``, in ``style``, with its saved weights and dtype.

        Compiled without initialization, then given the file's tensors with a strict
        ``load_state_dict(assign=True)``: no copy, the parameters are a private copy-on-write
        mapping of the file (changes never reach the store). Raises ``NoWeights`` for a run that
        has none. The module is in training mode, as compiled.
        """
        record = self.get(model_id)
        target = resolve_device(device)
        state = self._read_weights(record, target)
        dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
        model = compile_spec(record.spec, style, target, dtype, init=False)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as error:
            raise StoreError(f"the weights of model {model_id} do not fit its spec: {error}") from error
        return model

    def export(self, model_id: str) -> tuple[ModelSpec, dict[str, np.ndarray]]:
        """The spec and the weights as numpy arrays (bfloat16 ones as float32: numpy has no bfloat16)."""
        record = self.get(model_id)
        state = self._read_weights(record, torch.device("cpu"))
        return record.spec, {key: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for key, t in state.items()}

    def list(self, status: str | None = None) -> list[ModelRecord]:
        """Every model and run in full, oldest first (``page``'s order reversed); only those with ``status`` when given.

        Reads and parses every spec and history: for a listing, ``page``.
        """
        self._interrupt_orphans()
        if status is None:
            rows = self._rows(OLDEST_FIRST)
        else:
            rows = self._rows(f"WHERE status = ? {OLDEST_FIRST}", (check_status(status),))
        return [self._record(row) for row in rows]

    def page(self, status: str | None = None, limit: int = 100, after: str | None = None) -> Page:
        """Up to ``limit`` (1 to ``MAX_PAGE``) summaries, newest first, from after the cursor ``after``; only ``status`` when given.

        Pass ``Page.next`` as ``after`` for the page after; it is None on the last page. Cursors
        are positions in (created, id) order, not offsets: entries added or deleted meanwhile
        never make a page repeat or skip another entry (new ones are newer than every cursor, so
        they show on a listing started afresh). The SQL reads only the summary columns, never a
        spec or history. ``BadCursor`` (a ``ValueError``) for a cursor no page returned; its message
        names no argument, so a caller puts its own name for it in front (``page_token: ...``).
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1 to {MAX_PAGE} (entries a page holds); got {shown(limit)}")
        conditions: list[str] = []
        params: list[Any] = []
        if status is not None:
            conditions.append("status = ?")
            params.append(check_status(status))
        if after is not None:
            conditions.append("(created_us, id) < (?, ?)")
            params.extend(_position(after))
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        self._interrupt_orphans()
        with self._reading() as db:
            rows = db.execute(
                f"SELECT {SUMMARY_COLUMNS} FROM models {where} {NEWEST_FIRST} LIMIT ?", (*params, limit + 1)).fetchall()
        records = [ModelSummary(**self._summary(row)) for row in rows[:limit]]
        last = records[-1] if len(rows) > limit else None
        return Page(records=records, next=None if last is None else _cursor(_micros(last.created), last.id))
