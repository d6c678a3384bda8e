"""``PostgresStore``: the model store's index in PostgreSQL, its weights in a bucket or a shared directory.

For replicas on many hosts: every replica opens the same database and the same weights place
(``specbuilder.store.objects``), and sees what any of them stored as soon as it is committed.
It keeps the directory store's contract, most of it with the directory store's own code (this
class only replaces how the index is reached and how weights are kept):

- Atomic visibility: weights are written whole under a key of their own, then the row that
  names them commits; a kill at any moment leaves at most an object no row names. ``sweep``
  deletes such objects once older than ``orphan_grace_seconds`` (another replica may be between
  its upload and its commit; opening a store sweeps).
- Limits: every write transaction first takes one advisory lock (per schema), as SQLite's
  ``BEGIN IMMEDIATE`` does, so ``max_models``/``max_bytes`` are checked where they are committed
  and replicas cannot pass them together.
- Liveness: a running run carries a lease (``lease_us``, ``renewed_us`` by the database's clock,
  so hosts' clocks do not matter) that a thread of the store that started it renews every third
  of ``lease_seconds``. A run whose lease lapsed is marked ``interrupted`` by the next read of any
  replica. No flock, no process ids.
- Faults: connections come from a pool that checks each before handing it out, so a server
  restarted while idle costs nothing; a server or bucket that cannot be reached during a call
  raises ``StoreUnavailable`` naming which. ``finish_run`` retries a commit that could not
  reach them before giving up.

The schema lives in a namespace of its own (``?schema=NAME`` in the URL, default ``specbuilder``)
and is versioned by the SQL files in ``specbuilder/store/migrations``, applied in order under an
advisory lock, and recorded in its ``schema_version`` table: a handful of tables do not need
Alembic and its dependencies, and two replicas starting at once apply each migration once.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import torch
from torch import nn

from specbuilder.compiler import SpecLike
from specbuilder.store.model_store import ModelStore, _limit, _now_us
from specbuilder.store.objects import Objects, new_key, open_objects
from specbuilder.store.records import ModelNotFound, ModelRecord, StoreError, StoreUnavailable, check_id, new_id, shown

log = logging.getLogger(__name__)

DEFAULT_SCHEMA = "specbuilder"
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
DEFAULT_LEASE_S = 30.0
"""How long a running run outlives the replica that runs it before every replica reads it ``interrupted``."""
ORPHAN_GRACE_S = 3600.0
"""An unreferenced weights object younger than this may be another replica's save between upload and commit."""
POOL_TIMEOUT_S = 10.0
"""How long a call waits for a connection to the index before ``StoreUnavailable``."""
COMMIT_TRIES = 3
RETRY_PAUSE_S = 0.5
NOW_US = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
"""The database's clock, in the index's microseconds: leases are read and renewed by one clock."""
MIGRATIONS = "specbuilder.store.migrations"
MIGRATION_NAME = re.compile(r"([0-9]{4})_[a-z0-9_]+\.sql")


def migrations() -> list[tuple[int, str]]:
    """The package's schema migrations, ``(version, SQL)`` in order: ``NNNN_what.sql`` files."""
    found = []
    for entry in resources.files(MIGRATIONS).iterdir():
        match = MIGRATION_NAME.fullmatch(entry.name)
        if match:
            found.append((int(match[1]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def split_url(url: str) -> tuple[str, str]:
    """A ``postgresql://`` URL as the connection string psycopg takes and the schema (``?schema=``) it names."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema (in the store's URL) is lowercase letters, digits and '_', at most 63; got {shown(schema)}")
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    return urlunsplit(parts._replace(scheme="postgresql", query=rest)), schema


def shown_url(url: str) -> str:
    """``url`` without its password: what messages and ``repr`` show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class _Sql:
    """A psycopg connection taking the SQL the directory store writes (``?`` parameters, as sqlite3 does)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def execute(self, statement: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self.connection.execute(statement.replace("?", "%s"), params)


class PostgresStore(ModelStore):
    """The ``ModelStore`` contract with the index in PostgreSQL and weights in ``weights`` (a bucket or a directory).

    >>> store = ModelStore.open("postgresql://specbuilder@db:5432/models", weights="s3://models/prod")  # doctest: +SKIP

    ``url`` is a libpq URL (a password in it, or better ``$PGPASSWORD`` / ``~/.pgpass``), with
    ``?schema=NAME`` choosing the namespace (default ``specbuilder``). ``StoreUnavailable`` if the
    database or the bucket cannot be reached, now or during any later call.
    """

    def __init__(self, url: str, weights: str | Any, *, max_bytes: int | None = None, max_models: int | None = None,
                 lease_seconds: float = DEFAULT_LEASE_S, orphan_grace_seconds: float = ORPHAN_GRACE_S) -> None:
        from psycopg_pool import ConnectionPool

        conninfo, self.schema = split_url(url)
        self.url = shown_url(url)
        self.max_bytes = _limit(max_bytes, "max_bytes")
        self.max_models = _limit(max_models, "max_models")
        for value, name in ((lease_seconds, "lease_seconds"), (orphan_grace_seconds, "orphan_grace_seconds")):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds; got {shown(value)}")
        self.lease_seconds = float(lease_seconds)
        self.orphan_grace_seconds = float(orphan_grace_seconds)
        self._token = new_id()
        self._lock = threading.RLock()
        self._running: set[str] = set()
        self._objects: Objects = open_objects(weights)
        self._write_lock = f"specbuilder.write.{self.schema}"
        self._pool = ConnectionPool(
            conninfo, min_size=1, max_size=8, open=False, timeout=POOL_TIMEOUT_S, check=ConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": 5, "options": f"-c search_path={self.schema}"},
            name=f"specbuilder-store-{self._token[:8]}",
        )
        self._stopping = threading.Event()
        try:
            self._pool.open(wait=True, timeout=POOL_TIMEOUT_S)
            self._migrate()
            self.sweep()
        except Exception as error:
            self._pool.close()
            if isinstance(error, StoreError | ValueError):
                raise
            raise self._unavailable(error) from error
        self._renewer = threading.Thread(target=self._renew, name="specbuilder-store-lease", daemon=True)
        self._renewer.start()

    # -- the index ---------------------------------------------------------------------------

    def _unavailable(self, error: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"the PostgreSQL index at {self.url} cannot be reached: {str(error).strip() or type(error).__name__}; "
                                "check that the database server is up and reachable, then retry")

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection (autocommit); the server unreachable as ``StoreUnavailable``; ``StoreError`` once closed."""
        import psycopg
        from psycopg_pool import PoolClosed, PoolTimeout

        try:
            with self._pool.connection() as connection:
                yield connection
        except PoolClosed:
            raise StoreError(f"{self!r} is closed") from None
        except (psycopg.OperationalError, PoolTimeout) as error:
            raise self._unavailable(error) from error

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        with self._connection() as connection:
            yield _Sql(connection)

    @contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[Any]:
        """A write transaction, after every other store's on this schema (one advisory lock); a progress commit
        (``durable=False``) does not wait for the server's log flush."""
        with self._connection() as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (self._write_lock,))
            if not durable:
                connection.execute("SET LOCAL synchronous_commit = off")
            yield _Sql(connection)

    def _migrate(self) -> None:
        """Bring the schema to the newest migration, each applied once, under an advisory lock; ``StoreError`` if it is newer."""
        known = migrations()
        with self._connection() as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"specbuilder.migrate.{self.schema}",))
            connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            connection.execute(f'SET LOCAL search_path TO "{self.schema}"')
            connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_us BIGINT NOT NULL)")
            (current,) = connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
            if current > known[-1][0]:
                raise StoreError(f"schema {self.schema} of {self.url} was written by a newer specbuilder (version {current}; this one "
                                 f"reads up to {known[-1][0]}): upgrade specbuilder on this host")
            for version, statements in known:
                if version > current:
                    connection.execute(statements)
                    connection.execute("INSERT INTO schema_version VALUES (%s, %s)", (version, _now_us()))

    def _owner(self) -> dict[str, Any]:
        return {**super()._owner(), "lease_us": int(self.lease_seconds * 1e6)}

    # -- liveness ----------------------------------------------------------------------------

    def _renew(self) -> None:
        """Renew the leases of this store's running runs every third of the lease, until closed; failures are logged."""
        while not self._stopping.wait(self.lease_seconds / 3):
            with self._lock:
                running = list(self._running)
            if not running:
                continue
            try:
                with self._reading() as db:
                    db.execute(f"UPDATE models SET renewed_us = {NOW_US} WHERE id = ANY(?) AND status = 'running'", (running,))
            except StoreError as error:
                log.warning("could not renew the leases of %d running runs: %s", len(running), error)

    def _interrupt_orphans(self) -> None:
        """Mark ``interrupted`` every run whose lease lapsed (its replica was killed or lost the index), by the database's clock."""
        with self._reading() as db:
            db.execute(
                "UPDATE models SET status = 'interrupted', updated_us = ?, reason = 'the replica running it (pid ' || owner_pid || "
                f"') stopped renewing its lease: it was killed or lost the index' WHERE status = 'running' AND renewed_us + lease_us < {NOW_US}",
                (_now_us(),))

    def start_run(self, spec: SpecLike, config: Any = None, name: str | None = None, dataset: Any = None) -> ModelRecord:
        record = super().start_run(spec, config, name, dataset)
        with self._lock:
            self._running.add(record.id)
        return record

    def finish_run(self, model_id: str, status: str, model: nn.Module | Mapping[str, torch.Tensor] | None = None, *,
                   history: Any = None, stats: Any = None, reason: str | None = None) -> ModelRecord:
        """``ModelStore.finish_run``, the commit tried ``COMMIT_TRIES`` times while the index or bucket cannot be reached.

        Whatever the outcome, this store stops renewing the run's lease: if the last try failed
        too, the run reads ``interrupted`` once its lease lapses, on every replica.
        """
        try:
            for attempt in range(COMMIT_TRIES):
                try:
                    return super().finish_run(model_id, status, model, history=history, stats=stats, reason=reason)
                except StoreUnavailable as error:
                    if attempt == COMMIT_TRIES - 1:
                        raise
                    log.warning("finishing run %s, try %d of %d: %s", model_id, attempt + 1, COMMIT_TRIES, error)
                    time.sleep(RETRY_PAUSE_S * 2**attempt)
            raise AssertionError("unreachable")
        finally:
            with self._lock:
                self._running.discard(model_id)

    # -- weights -----------------------------------------------------------------------------

    @contextmanager
    def _committing_weights(self, record: ModelRecord, tensors: dict[str, torch.Tensor], what: str,
                            rows: int) -> Iterator[tuple[Any, int]]:
        """Upload the weights under a fresh key, then commit the row that names them (the block writes it).

        The limits are checked before the upload and again in the committing transaction. A
        failure deletes the object, except when the index could not be reached: the commit may
        have happened, so the object is left for ``sweep``, which keeps what a row names.
        """
        self._precheck_room(tensors, what, rows)
        key = new_key(record.id)
        try:
            size = self._objects.write(key, tensors, {"specbuilder.id": record.id, "specbuilder.spec_hash": record.spec_hash})
        except StoreError:
            raise
        except Exception as error:
            raise self._write_failed(record, error) from error
        try:
            with self._transaction() as db:
                self._check_room(db, what, rows=rows, size=size)
                yield db, size
                db.execute("UPDATE models SET weights_key = ? WHERE id = ?", (key, record.id))
        except StoreUnavailable:
            raise
        except BaseException:
            self._drop(key)
            raise

    def _drop(self, key: str) -> None:
        """Delete a weights object no row names; one left behind (bucket unreachable) is swept later."""
        try:
            self._objects.delete(key)
        except StoreError as error:
            log.warning("weights object %s left for the sweep: %s", key, error)

    def _read_weights(self, record: ModelRecord, device: torch.device) -> dict[str, torch.Tensor]:
        self._check_has_weights(record)
        with self._reading() as db:
            row = db.execute("SELECT weights_key FROM models WHERE id = ?", (record.id,)).fetchone()
        if row is None:
            raise ModelNotFound(f"no model or run with id {record.id} in the store")
        try:
            return self._objects.read(row[0], device)
        except FileNotFoundError:
            raise StoreError(f"the weights of model {record.id} are missing: {row[0]} was removed from {self._objects.url} "
                             "outside specbuilder") from None

    def delete(self, model_id: str) -> None:
        """Remove a model or run: its row, then its weights object."""
        with self._transaction() as db:
            row = db.execute("DELETE FROM models WHERE id = ? RETURNING weights_key", (check_id(model_id),)).fetchone()
        if row is None:
            raise ModelNotFound(f"no model or run with id {model_id} in the store")
        if row[0] is not None:
            self._drop(row[0])

    def sweep(self, grace_seconds: float | None = None) -> list[str]:
        """Delete the weights objects no row names that are older than ``grace_seconds`` (default ``orphan_grace_seconds``); their keys.

        Younger ones may belong to a save another replica has uploaded and not yet committed.
        """
        grace = self.orphan_grace_seconds if grace_seconds is None else grace_seconds
        old = [key for key, age in self._objects.ages() if age > grace]
        if not old:
            return []
        with self._reading() as db:
            named = {row[0] for row in db.execute("SELECT weights_key FROM models WHERE weights_key = ANY(?)", (old,))}
        orphans = [key for key in old if key not in named]
        for key in orphans:
            self._drop(key)
        return orphans

    def weights_keys(self) -> dict[str, str]:
        """Every entry with weights, its id to its object's key (for copies and checks)."""
        with self._reading() as db:
            return dict(db.execute("SELECT id, weights_key FROM models WHERE weights_key IS NOT NULL").fetchall())

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Mark this store's unfinished runs ``interrupted``, stop renewing leases, close the pool; idempotent.

        If the index cannot be reached, the runs' leases lapse instead.
        """
        with self._lock:
            if self._pool.closed:
                return
            self._stopping.set()
        self._renewer.join()
        try:
            self._interrupt_own_runs()
        except StoreUnavailable as error:
            log.warning("closing %r: %s; its running runs read interrupted once their leases lapse", self, error)
        finally:
            self._pool.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r}, schema={self.schema!r}, weights={self._objects.url!r})"


__all__ = ["DEFAULT_LEASE_S", "PostgresStore", "StoreUnavailable", "migrations"]

